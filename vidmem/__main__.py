from vidmem.cli import main

main()
