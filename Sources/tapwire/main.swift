import TapwireDaemon

do {
    TapwireCommand.main(try ConfigFile.expand(Array(CommandLine.arguments.dropFirst())))
} catch {
    TapwireCommand.exit(withError: error)
}
