import Glibc
import CCapNG

public enum PrivilegeError: Error, CustomStringConvertible {
    case unknownUser(String)
    case unknownGroup(String)
    case libcapng(String)

    public var description: String {
        switch self {
        case .unknownUser(let u): return "--user: no such user '\(u)'"
        case .unknownGroup(let g): return "--user: no such group '\(g)'"
        case .libcapng(let what): return "dropping privileges: \(what)"
        }
    }
}

/// Drops every capability (and optionally switches to USER[:GROUP]) once the TAP and sockets
/// are open: afterwards /proc/self/status shows CapEff 0.
public enum Privileges {
    public static func resolve(_ spec: String) throws(PrivilegeError) -> (uid: uid_t, gid: gid_t) {
        let parts = spec.split(separator: ":", maxSplits: 1).map(String.init)
        let userName = parts.first ?? ""
        let uid: uid_t
        var gid: gid_t
        if let pw = getpwnam(userName) {
            uid = pw.pointee.pw_uid
            gid = pw.pointee.pw_gid
        } else if let number = UInt32(userName) {
            uid = number
            gid = number
        } else {
            throw .unknownUser(userName)
        }
        if parts.count == 2 {
            if let gr = getgrnam(parts[1]) { gid = gr.pointee.gr_gid }
            else if let number = UInt32(parts[1]) { gid = number }
            else { throw .unknownGroup(parts[1]) }
        }
        return (uid, gid)
    }

    public static func dropAll(switchingTo identity: (uid: uid_t, gid: gid_t)?) throws(PrivilegeError) {
        capng_clear(CAPNG_SELECT_BOTH)
        if let identity {
            let flags = capng_flags_t(rawValue: CAPNG_DROP_SUPP_GRP.rawValue | CAPNG_CLEAR_BOUNDING.rawValue)
            let rc = capng_change_id(Int32(bitPattern: identity.uid), Int32(bitPattern: identity.gid), flags)
            if rc != 0 { throw .libcapng("capng_change_id(\(identity.uid), \(identity.gid)) returned \(rc)") }
        } else {
            let rc = capng_apply(CAPNG_SELECT_BOTH)
            // -4/-5 mean the bounding set could not be changed (no CAP_SETPCAP): the effective,
            // permitted and inheritable sets are still cleared, which is what matters.
            if rc != 0 && capng_have_capabilities(CAPNG_SELECT_CAPS) != CAPNG_NONE {
                throw .libcapng("capng_apply returned \(rc)")
            }
        }
    }
}

extension Privileges {
    /// Lines of /proc/self/status ("CapEff 0000000000000000, Seccomp 2"), for the start-up log.
    /// A read-only open, which the seccomp filter allows.
    public static func processStatus(_ keys: [String]) -> String {
        guard let file = fopen("/proc/self/status", "r") else { return "?" }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 256)
        var found = [String]()
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(cString: line)
            for key in keys where text.hasPrefix(key + ":") {
                found.append(key + " " + text.dropFirst(key.count + 1).filter { !$0.isWhitespace })
            }
        }
        return found.joined(separator: ", ")
    }
}
