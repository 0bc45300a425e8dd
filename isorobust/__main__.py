from isorobust.cli import main

main()
