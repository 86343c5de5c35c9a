//! The `.proto` comments, as descriptions and summaries.

use std::collections::HashMap;

use prost_reflect::{DescriptorPool, FieldDescriptor, MessageDescriptor};

/// Comments of every element of the pool, by file and source path.
pub(super) struct Comments(HashMap<(String, Vec<i32>), String>);

impl Comments {
    pub(super) fn new(pool: &DescriptorPool) -> Self {
        let mut map = HashMap::new();
        for file in pool.files() {
            let Some(info) = &file.file_descriptor_proto().source_code_info else {
                continue;
            };
            for location in &info.location {
                let text = location
                    .leading_comments
                    .as_deref()
                    .or(location.trailing_comments.as_deref())
                    .map(clean_comment)
                    .unwrap_or_default();
                if !text.is_empty() {
                    map.insert((file.name().to_owned(), location.path.clone()), text);
                }
            }
        }
        Self(map)
    }

    pub(super) fn get(&self, file: &str, path: &[i32]) -> Option<&str> {
        self.0
            .get(&(file.to_owned(), path.to_vec()))
            .map(String::as_str)
    }

    pub(super) fn message(&self, m: &MessageDescriptor) -> Option<&str> {
        self.get(m.parent_file().name(), m.path())
    }

    pub(super) fn field(&self, f: &FieldDescriptor) -> Option<&str> {
        self.get(f.parent_file().name(), f.path())
    }
}

fn clean_comment(raw: &str) -> String {
    raw.lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_owned()
}

/// The first sentence (or line) of a description, for operation summaries.
pub(super) fn summary(description: &str) -> String {
    let first = description.split("\n\n").next().unwrap_or_default();
    let line = first.replace('\n', " ");
    match line.find(". ") {
        Some(i) => line[..=i].to_owned(),
        None => line,
    }
}
