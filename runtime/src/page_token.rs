//! Opaque page tokens for list RPCs: a cursor (the `seq` of the last row
//! served) bound to the query it came from. A token of another query (other
//! filters, another customer) or an edited one is refused.
//!
//! Layout: version byte, 8-byte tag, 8-byte big-endian `seq`, unpadded
//! base64url. The tag is SHA-256 over the length-prefixed scope parts and
//! the `seq`. It has no secret, so it catches mistakes, not attackers; a
//! token grants nothing a new request could not.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

const VERSION: u8 = 1;
const LEN: usize = 1 + 8 + 8;

fn tag(scope: &[&str], seq: i64) -> [u8; 8] {
    let mut h = Sha256::new();
    for part in scope {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.update(seq.to_be_bytes());
    let digest = h.finalize();
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&digest[..8]);
    tag
}

/// The token for the page after `seq` of the query described by `scope`
/// (e.g. `["ordermesh.order.v1.ListOrders", customer, status]`).
pub fn encode(scope: &[&str], seq: i64) -> String {
    let mut bytes = Vec::with_capacity(LEN);
    bytes.push(VERSION);
    bytes.extend_from_slice(&tag(scope, seq));
    bytes.extend_from_slice(&seq.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The `seq` a token of the query `scope` points after; `None` for anything
/// else (garbage, an edited token, a token of another query).
pub fn decode(scope: &[&str], token: &str) -> Option<i64> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    if bytes.len() != LEN || bytes[0] != VERSION {
        return None;
    }
    let seq = i64::from_be_bytes(bytes[9..17].try_into().ok()?);
    (bytes[1..9] == tag(scope, seq)).then_some(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_only_in_their_scope() {
        let scope = ["list", "alice", ""];
        let token = encode(&scope, 42);
        assert_eq!(decode(&scope, &token), Some(42));
        assert_eq!(decode(&["list", "bob", ""], &token), None);
        // Length prefixes keep parts apart: "ab"+"" is not "a"+"b".
        assert_ne!(encode(&["ab", ""], 1), encode(&["a", "b"], 1));
    }

    #[test]
    fn edited_or_garbage_tokens_are_refused() {
        let scope = ["list"];
        let token = encode(&scope, 1000);
        let mut edited = token.clone().into_bytes();
        let last = edited.len() - 1;
        edited[last] = if edited[last] == b'A' { b'B' } else { b'A' };
        let edited = String::from_utf8(edited).unwrap();
        for bad in [
            "",
            "x",
            "!!!!",
            "AAAAAAAAAAAAAAAAAAAAAAA",
            &edited,
            &format!("{token}A"),
        ] {
            assert_eq!(decode(&scope, bad), None, "{bad:?}");
        }
    }
}
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::{decode, encode};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Any text decodes to no cursor or to one a real token names; a
        /// random string is (all but certainly) no token of the scope.
        #[test]
        fn page_tokens_refuse_arbitrary_text(scope in "[a-z/]{0,12}", text in any::<String>()) {
            prop_assert_eq!(decode(&[&scope], &text), None);
        }

        #[test]
        fn page_tokens_refuse_base64_lookalikes(text in "[A-Za-z0-9_-]{20,26}") {
            prop_assert_eq!(decode(&["list"], &text), None);
        }

        /// A token round trips in its scope, and only there; any one-character
        /// edit (replace, insert, delete) is refused.
        #[test]
        fn page_tokens_round_trip_and_refuse_every_edit(
            scope in prop::collection::vec(any::<String>(), 0..4),
            other in prop::collection::vec(any::<String>(), 0..4),
            seq in any::<i64>(),
            at in any::<prop::sample::Index>(),
            replacement in any::<char>(),
            edit in 0..3u8,
        ) {
            let scope: Vec<&str> = scope.iter().map(String::as_str).collect();
            let other: Vec<&str> = other.iter().map(String::as_str).collect();
            let token = encode(&scope, seq);
            prop_assert_eq!(decode(&scope, &token), Some(seq));
            if other != scope {
                prop_assert_eq!(decode(&other, &token), None);
            }
            let mut chars: Vec<char> = token.chars().collect();
            let i = at.index(chars.len());
            match edit {
                0 => {
                    prop_assume!(chars[i] != replacement);
                    chars[i] = replacement;
                }
                1 => chars.insert(i, replacement),
                _ => {
                    chars.remove(i);
                }
            }
            let edited: String = chars.into_iter().collect();
            prop_assert_eq!(decode(&scope, &edited), None, "{} -> {}", token, edited);
        }
    }
}
