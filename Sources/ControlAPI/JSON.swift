// JSON encoding and decoding, with error messages that say exactly what was wrong.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import RateLimiter

/// The JSON conventions of the control API: pretty-printed, sorted keys, and decoding
/// errors turned into one readable line.
public enum ControlJSON {
    /// Pretty-printed, sorted keys, trailing newline.
    public static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        var bytes = Array(try encoder.encode(value))
        bytes.append(UInt8(ascii: "\n"))
        return bytes
    }

    /// Decodes `T`, throwing `ControlAPIError.badRequest` with a one-line explanation
    /// (the JSON syntax error, or the field and what was wrong with it).
    public static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws(ControlAPIError) -> T {
        do {
            return try JSONDecoder().decode(type, from: Data(bytes))
        } catch let error as DecodingError {
            // The decoder only says "not valid JSON" (no position, no underlying error):
            // JSONSyntax finds where.
            if case .dataCorrupted(let context) = error, context.codingPath.isEmpty,
               let syntax = JSONSyntax.firstError(in: bytes) {
                throw .badRequest("malformed JSON: \(syntax)")
            }
            throw .badRequest(describe(error))
        } catch {
            throw .badRequest("invalid JSON: \(error)")
        }
    }

    /// One line for a decoding error: "tx.bandwidth: cannot parse ...", "malformed JSON: ...".
    public static func describe(_ error: DecodingError) -> String {
        switch error {
        case .dataCorrupted(let context):
            if context.codingPath.isEmpty { return "malformed JSON: \(context.debugDescription)" }
            if let parse = context.underlyingError as? LimitParseError {
                // The parser's message starts with the field it was given; give it the full path.
                let path = context.codingPath.map(\.stringValue)
                if parse.flag.contains(".") || path.count <= 1 { return parse.description }
                return path.dropLast().joined(separator: ".") + "." + parse.description
            }
            return "\(dottedPath(context.codingPath)): \(context.debugDescription)"
        case .keyNotFound(let key, let context):
            let at = context.codingPath.isEmpty ? "" : " in \(dottedPath(context.codingPath))"
            return "missing key \"\(key.stringValue)\"\(at)"
        case .typeMismatch(let type, let context):
            return "\(pathOrRoot(context.codingPath)): expected \(jsonTypeName(type))"
        case .valueNotFound(let type, let context):
            return "\(pathOrRoot(context.codingPath)): expected \(jsonTypeName(type)), found null"
        @unknown default:
            return "invalid JSON: \(error)"
        }
    }

    private static func pathOrRoot(_ path: [any CodingKey]) -> String {
        path.isEmpty ? "body" : dottedPath(path)
    }

    private static func jsonTypeName(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: return "a string"
        case is Bool.Type: return "true or false"
        case is UInt64.Type, is UInt32.Type, is UInt.Type: return "a non-negative whole number"
        case is Int.Type, is Int64.Type, is Int32.Type: return "a whole number"
        case is Double.Type, is Float.Type: return "a number"
        default:
            let name = "\(type)"
            if name.hasPrefix("Dictionary") { return "an object" }
            if name.hasPrefix("Array") { return "an array" }
            return name
        }
    }
}
