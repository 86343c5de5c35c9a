//! What the property tests ("fuzz targets") of every crate share: one
//! proptest configuration, wire bytes sometimes broken, and one-character
//! edits of a token.

use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};

/// `cases` cases (unless `PROPTEST_CASES` asks for another number), with
/// failures persisted in `proptest-regressions/` beside the test's source
/// file (`tests/proptest-regressions/fuzz.txt` for `tests/it/fuzz.rs`) and
/// replayed first ever after.
pub fn proptest_config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config.failure_persistence = Some(Box::new(FileFailurePersistence::SourceParallel(
        "proptest-regressions",
    )));
    config
}

/// Bytes as a decoder may find them on the wire: any bytes, a `valid`
/// encoding, or one with a byte changed or cut short.
pub fn sometimes_broken(valid: BoxedStrategy<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        valid.clone(),
        (valid.clone(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut b, at, x)| {
            if !b.is_empty() {
                let i = at.index(b.len());
                b[i] = x;
            }
            b
        }),
        (valid, any::<prop::sample::Index>()).prop_map(|(mut b, at)| {
            b.truncate(at.index(b.len() + 1));
            b
        }),
    ]
    .boxed()
}

/// `token` with one character edited at `at`: `edit` 0 replaces it with
/// `replacement` (a case that would not change the token is rejected), 1
/// inserts `replacement` before it, anything else deletes it.
pub fn edit_one_char(
    token: &str,
    at: prop::sample::Index,
    replacement: char,
    edit: u8,
) -> Result<String, TestCaseError> {
    let chars: Vec<char> = token.chars().collect();
    let (before, from) = chars.split_at(at.index(chars.len()));
    let (inserted, after) = match edit {
        0 => {
            prop_assume!(from[0] != replacement);
            (Some(replacement), &from[1..])
        }
        1 => (Some(replacement), from),
        _ => (None, &from[1..]),
    };
    Ok(before.iter().chain(&inserted).chain(after).collect())
}
