"""Method registry: register by name, build from a spec string "name:key=value,key=value".

Each method is a class with a ``Params`` dataclass (its hyper-parameters and defaults) and a
constructor ``cls(params, **objects)``. Stage 1 (query-agnostic, incremental) implements
``init_state()`` and ``update(state, block) -> (state, TokenSet)``, where the state is a dict of
tensors and JSON values (None, bool, int, float, str, lists, str-keyed dicts) so that
:func:`state_to_bytes` stores it without pickle; stage 2 (query-aware)
implements ``select(tokens, budget, context) -> TokenSet``. A class may serve both stages.
Spec values are typed from the ``Params`` field annotations; absent keys keep their defaults.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from compression.tokens import StoredFormatError, TokenBlock, TokenSet, pack_tensors, unpack_tensors

_TENSOR_REF = "$tensor"  # a JSON placeholder {"$tensor": name} for a tensor stored beside the JSON


@runtime_checkable
class ModelHooks(Protocol):
    """What stage-2 methods may ask of the Video LLM (the vlm adapter satisfies it)."""

    def probe_attention(self, question: str, tokens: TokenSet, layer: int) -> Tensor:
        """Attention from the last text token to each visual token at LLM layer ``layer``: [K]."""
        ...

    def text_relevance(self, question: str, tokens: TokenSet) -> Tensor:
        """Similarity of the question's mean input embedding to each visual token's features: [K]."""
        ...

    def question_states(self, question: str, tokens: TokenSet, layer: int) -> tuple[Tensor, Tensor]:
        """Hidden states after LLM layer ``layer`` of the prompt holding ``tokens`` and ``question``:
        (the question's tokens [T, H], the visual tokens [K, H] in TokenSet order)."""
        ...


@dataclass(frozen=True)
class SelectContext:
    """Everything a stage-2 method may use besides the tokens and the budget."""

    question: str = ""
    model: ModelHooks | None = None
    seed: int = 0


class Stage1Method(Protocol):
    def init_state(self) -> dict: ...

    def update(self, state: dict, block: TokenBlock) -> tuple[dict, TokenSet]: ...


def state_to_bytes(state: dict) -> bytes:
    """A stage-1 state (tensors and JSON values, nested in dicts and lists) as safetensors plus JSON.

    Raises TypeError for anything else (an object that only pickle could store).
    """
    tensors: dict[str, Tensor] = {}
    tree = _encode(state, "state", tensors)
    return pack_tensors("Stage1State", tensors, {"tree": tree})


def state_from_bytes(data: bytes) -> dict:
    """Read :func:`state_to_bytes`; raises StoredFormatError (a ValueError) on anything else, never unpickles."""
    tensors, meta = unpack_tensors(data, "Stage1State")
    try:
        state = _decode(meta.get("tree"), tensors)
    except RecursionError:
        raise StoredFormatError("stored stage-1 state is malformed: nested too deeply") from None
    if not isinstance(state, dict):
        raise StoredFormatError("stored stage-1 state is malformed: not a dict")
    return state


def _encode(value: Any, path: str, tensors: dict[str, Tensor]) -> Any:
    if isinstance(value, Tensor):
        tensors[path] = value
        return {_TENSOR_REF: path}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value) or _TENSOR_REF in value:
            raise TypeError(f"stage-1 state {path}: dict keys must be strings other than {_TENSOR_REF!r}")
        return {k: _encode(v, f"{path}.{k}", tensors) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"stage-1 state {path}: {type(value).__name__} cannot be stored (tensors and JSON values only)")


def _decode(value: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {_TENSOR_REF}:
            if value[_TENSOR_REF] not in tensors:
                raise StoredFormatError(f"stored stage-1 state is malformed: no tensor {value[_TENSOR_REF]!r}")
            return tensors[value[_TENSOR_REF]]
        return {k: _decode(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value


class Stage2Method(Protocol):
    def select(self, tokens: TokenSet, budget: int, context: SelectContext) -> TokenSet: ...


@dataclass(frozen=True)
class MethodInfo:
    name: str
    stages: tuple[int, ...]
    cls: type


_METHODS: dict[str, MethodInfo] = {}


def register_method(name: str, stage: int | tuple[int, ...] = 1) -> Callable[[type], type]:
    """Class decorator: register ``cls`` under ``name`` for ``stage`` (1, 2 or (1, 2))."""
    stages = (stage,) if isinstance(stage, int) else tuple(stage)
    if not set(stages) <= {1, 2} or not stages:
        raise ValueError(f"stage must be 1, 2 or (1, 2), got {stage!r}")

    def wrap(cls: type) -> type:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered; registered: {', '.join(sorted(_METHODS))}")
        if not dataclasses.is_dataclass(getattr(cls, "Params", None)):
            raise ValueError(f"method {name!r} needs a Params dataclass")
        _METHODS[name] = MethodInfo(name, stages, cls)
        cls.name = name
        cls.stages = stages
        return cls

    return wrap


def _load_methods() -> None:
    import compression.methods  # noqa: F401  (registers every method on import)


def list_methods(stage: int | None = None) -> list[str]:
    """Registered names, sorted; only those serving ``stage`` when given."""
    _load_methods()
    return sorted(n for n, info in _METHODS.items() if stage is None or stage in info.stages)


def method_info(name: str) -> MethodInfo:
    _load_methods()
    if name not in _METHODS:
        raise ValueError(f"unknown compression method {name!r}; choose one of: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """"name:k=v,k=v" -> (name, {k: v}) with raw string values."""
    name, _, rest = spec.strip().partition(":")
    pairs: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"bad spec item {item!r} in {spec!r}: expected key=value")
        pairs[key.strip()] = value.strip()
    return name.strip(), pairs


def build_params(cls: type, values: dict[str, str]) -> Any:
    """The method's Params with ``values`` converted to each field's annotated type."""
    fields = {f.name: f for f in dataclasses.fields(cls.Params)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for method {cls.name!r}; "
            f"valid: {', '.join(fields) or '(none)'}"
        )
    hints = typing.get_type_hints(cls.Params)
    return cls.Params(**{k: _convert(k, v, hints[k]) for k, v in values.items()})


def build_method(spec: str, stage: int | None = None, **objects: Any) -> Any:
    """Build the method named in ``spec``; ``objects`` (tensors, scorers) go to its constructor."""
    name, values = parse_spec(spec)
    info = method_info(name)
    if stage is not None and stage not in info.stages:
        raise ValueError(f"method {name!r} is not a stage-{stage} method; choose one of: "
                         f"{', '.join(list_methods(stage))}")
    return info.cls(build_params(info.cls, values), **objects)


def _convert(key: str, raw: str, hint: Any) -> Any:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    if type(None) in options and raw.lower() in ("none", "null", ""):
        return None
    for kind in (o for o in options if o is not type(None)):
        try:
            return _as(kind, raw)
        except ValueError:
            continue
    raise ValueError(f"parameter {key}={raw!r} is not a valid {hint}")


def _as(kind: Any, raw: str) -> Any:
    if kind is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    if kind in (int, float, str):
        return kind(raw)
    if typing.get_origin(kind) is typing.Literal:
        if raw not in typing.get_args(kind):
            raise ValueError(raw)
        return raw
    raise ValueError(f"unsupported parameter type {kind}")
