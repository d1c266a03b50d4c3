from cdiff_cli.cli.main import main

main()
