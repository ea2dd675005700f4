import Foundation

/// `--config FILE`: a JSON object whose keys are tapwire's long option names, e.g.
/// {"socket-path": "/run/tapwire/vm1.sock", "tap": "vm1tap", "tx-bandwidth": "100Mbit", "client": true}.
/// The file's options are placed before the command line's, so options given on the command
/// line win (the last occurrence of an option is the one used).
public enum ConfigFile {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    public static func expand(_ arguments: [String]) throws -> [String] {
        var rest = [String]()
        var path: String?
        var i = 0
        while i < arguments.count {
            let argument = arguments[i]
            if argument == "--config" {
                guard i + 1 < arguments.count else { throw Failure(description: "--config needs a file path") }
                path = arguments[i + 1]
                i += 2
                continue
            }
            if argument.hasPrefix("--config=") {
                path = String(argument.dropFirst("--config=".count))
            } else {
                rest.append(argument)
            }
            i += 1
        }
        guard let path else { return arguments }
        return try options(fromFile: path) + rest
    }

    static func options(fromFile path: String) throws -> [String] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw Failure(description: "--config \(path): cannot read the file")
        }
        let table: [String: Scalar]
        do { table = try JSONDecoder().decode([String: Scalar].self, from: data) } catch {
            throw Failure(description: "--config \(path): expected a JSON object of option names to strings, numbers or true/false (\(error))")
        }
        var out = [String]()
        for key in table.keys.sorted() {
            guard key != "config" else { throw Failure(description: "--config \(path): a config file cannot name another") }
            let flag = "--" + key
            switch table[key]! {
            case .flag(let on): if on { out.append(flag) }
            case .text(let text): out += [flag, text]
            }
        }
        return out
    }
}

/// One option value in a config file.
enum Scalar: Decodable {
    case flag(Bool)
    case text(String)

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let value = try? container.decode(Bool.self) { self = .flag(value) }
        else if let value = try? container.decode(Int64.self) { self = .text(String(value)) }
        else if let value = try? container.decode(Double.self) { self = .text(String(value)) }
        else { self = .text(try container.decode(String.self)) }
    }
}
