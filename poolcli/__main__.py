from poolcli.app import main

main()
