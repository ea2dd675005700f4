import Logging

/// Placeholder until the control API is wired: nothing to start.
struct ControlPlane {
    static func start(command: TapwireCommand, loop: BackendLoop, logger: Logger) throws -> ControlPlane? {
        nil
    }

    func stop() {}
}
