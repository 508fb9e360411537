"""Every compression method, one module each; importing this package registers them all."""

from compression.methods import (  # noqa: F401
    adatp,
    adatp_local,
    cacovid,
    divprune,
    dtd,
    fastv,
    none,
    random,
    recent,
    tome,
    uniform,
    visionzip,
    vtm,
)
