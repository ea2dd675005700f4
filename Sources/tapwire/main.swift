import TapwireDaemon

TapwireCommand.main()
