/// Requests a frontend sends (docs/interop/vhost-user.rst, "Front-end message types").
public enum VhostUserRequest: UInt32, Sendable, CaseIterable {
    case getFeatures = 1
    case setFeatures = 2
    case setOwner = 3
    case resetOwner = 4
    case setMemTable = 5
    case setLogBase = 6
    case setLogFD = 7
    case setVringNum = 8
    case setVringAddr = 9
    case setVringBase = 10
    case getVringBase = 11
    case setVringKick = 12
    case setVringCall = 13
    case setVringErr = 14
    case getProtocolFeatures = 15
    case setProtocolFeatures = 16
    case getQueueNum = 17
    case setVringEnable = 18
    case sendRARP = 19
    case netSetMTU = 20
    case setBackendReqFD = 21
    case iotlbMessage = 22
    case setVringEndian = 23
    case getConfig = 24
    case setConfig = 25
    case createCryptoSession = 26
    case closeCryptoSession = 27
    case postcopyAdvise = 28
    case postcopyListen = 29
    case postcopyEnd = 30
    case getInflightFD = 31
    case setInflightFD = 32
    case gpuSetSocket = 33
    case resetDevice = 34
    case vringKick = 35
    case getMaxMemSlots = 36
    case addMemReg = 37
    case remMemReg = 38
    case setStatus = 39
    case getStatus = 40

    public var name: String {
        switch self {
        case .getFeatures: return "GET_FEATURES"
        case .setFeatures: return "SET_FEATURES"
        case .setOwner: return "SET_OWNER"
        case .resetOwner: return "RESET_OWNER"
        case .setMemTable: return "SET_MEM_TABLE"
        case .setLogBase: return "SET_LOG_BASE"
        case .setLogFD: return "SET_LOG_FD"
        case .setVringNum: return "SET_VRING_NUM"
        case .setVringAddr: return "SET_VRING_ADDR"
        case .setVringBase: return "SET_VRING_BASE"
        case .getVringBase: return "GET_VRING_BASE"
        case .setVringKick: return "SET_VRING_KICK"
        case .setVringCall: return "SET_VRING_CALL"
        case .setVringErr: return "SET_VRING_ERR"
        case .getProtocolFeatures: return "GET_PROTOCOL_FEATURES"
        case .setProtocolFeatures: return "SET_PROTOCOL_FEATURES"
        case .getQueueNum: return "GET_QUEUE_NUM"
        case .setVringEnable: return "SET_VRING_ENABLE"
        case .sendRARP: return "SEND_RARP"
        case .netSetMTU: return "NET_SET_MTU"
        case .setBackendReqFD: return "SET_BACKEND_REQ_FD"
        case .iotlbMessage: return "IOTLB_MSG"
        case .setVringEndian: return "SET_VRING_ENDIAN"
        case .getConfig: return "GET_CONFIG"
        case .setConfig: return "SET_CONFIG"
        case .createCryptoSession: return "CREATE_CRYPTO_SESSION"
        case .closeCryptoSession: return "CLOSE_CRYPTO_SESSION"
        case .postcopyAdvise: return "POSTCOPY_ADVISE"
        case .postcopyListen: return "POSTCOPY_LISTEN"
        case .postcopyEnd: return "POSTCOPY_END"
        case .getInflightFD: return "GET_INFLIGHT_FD"
        case .setInflightFD: return "SET_INFLIGHT_FD"
        case .gpuSetSocket: return "GPU_SET_SOCKET"
        case .resetDevice: return "RESET_DEVICE"
        case .vringKick: return "VRING_KICK"
        case .getMaxMemSlots: return "GET_MAX_MEM_SLOTS"
        case .addMemReg: return "ADD_MEM_REG"
        case .remMemReg: return "REM_MEM_REG"
        case .setStatus: return "SET_STATUS"
        case .getStatus: return "GET_STATUS"
        }
    }
}

/// Bits of the header's flags word.
public enum HeaderFlags {
    public static let versionMask: UInt32 = 0x3
    public static let version: UInt32 = 0x1
    public static let reply: UInt32 = 0x4
    public static let needReply: UInt32 = 0x8
}

/// VHOST_USER_PROTOCOL_F_* bit numbers.
public enum ProtocolFeature: UInt64, Sendable, CaseIterable {
    case multiqueue = 0
    case logSharedMemory = 1
    case rarp = 2
    case replyAck = 3
    case netMTU = 4
    case backendRequests = 5
    case crossEndian = 6
    case cryptoSession = 7
    case pagefault = 8
    case config = 9
    case backendSendFD = 10
    case hostNotifier = 11
    case inflightSharedMemory = 12
    case resetDevice = 13
    case inbandNotifications = 14
    case configureMemSlots = 15
    case status = 16

    public var mask: UInt64 { 1 << rawValue }
}

public enum VhostUserLimits {
    /// Payloads are small (the largest is a memory table of 8 regions or a 256-byte config);
    /// anything larger is refused before it is read.
    public static let maxPayload: UInt32 = 4096
    public static let maxMemTableRegions = 8
    public static let maxConfigSize: UInt32 = 256
    public static let headerSize = 12
    /// SET_LOG_BASE: u64 mmap_size, u64 mmap_offset.
    public static let logBasePayloadSize: UInt32 = 16
    /// SET_VRING_ADDR flags: VHOST_VRING_F_LOG, the used ring is logged at log_guest_addr.
    public static let vringFlagLog: UInt32 = 1
    /// In KICK/CALL/ERR payloads: bits 0-7 the queue index, bit 8 "no descriptor".
    public static let vringIndexMask: UInt64 = 0xff
    public static let vringNoFDMask: UInt64 = 0x100
}

/// VHOST_USER_F_PROTOCOL_FEATURES is feature bit 30 (the mask, not the number, goes on the wire).
public let protocolFeaturesBit: UInt64 = 1 << 30
