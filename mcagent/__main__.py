from mcagent.cli import main

main()
