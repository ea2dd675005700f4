/// The release this build is: `tapwire --version`, `tapwirectl --version` and the Debian
/// package's version all come from here.
public enum TapwireVersion {
    public static let current = "0.4.0"
}
