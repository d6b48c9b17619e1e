from rodimus.cli import main

main()
