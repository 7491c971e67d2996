//! The management API, one module per resource. Every handler has the same
//! three steps: find the objects (404 if missing), act through the broker
//! core, answer with [`super::render`]'s JSON.

pub mod bindings;
pub mod connections;
pub mod definitions;
pub mod exchanges;
pub mod messages;
pub mod overview;
pub mod queues;
pub mod vhosts;

use std::collections::HashMap;

use serde_json::{Map, Value};

/// Applies a listing's query: `name` keeps objects whose name contains it,
/// `columns=a,b.c` keeps only those fields (as RabbitMQ does).
pub fn listing(items: Vec<Value>, query: &HashMap<String, String>) -> Value {
    let name = query.get("name").filter(|n| !n.is_empty());
    let columns: Option<Vec<&str>> = query.get("columns").map(|c| {
        c.split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect()
    });
    let items = items
        .into_iter()
        .filter(|item| match name {
            None => true,
            Some(n) => item["name"]
                .as_str()
                .is_some_and(|s| s.contains(n.as_str())),
        })
        .map(|item| match &columns {
            None => item,
            Some(cols) => pick_columns(&item, cols),
        })
        .collect();
    Value::Array(items)
}

fn pick_columns(item: &Value, columns: &[&str]) -> Value {
    let mut out = Map::new();
    for col in columns {
        let path: Vec<&str> = col.split('.').collect();
        let mut v = item;
        let mut found = true;
        for p in &path {
            match v.get(p) {
                Some(next) => v = next,
                None => {
                    found = false;
                    break;
                }
            }
        }
        if !found {
            continue;
        }
        let mut slot = &mut out;
        for p in &path[..path.len() - 1] {
            slot = slot
                .entry(p.to_string())
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("an object");
        }
        slot.insert(path[path.len() - 1].to_owned(), v.clone());
    }
    Value::Object(out)
}

/// A query flag such as `if-unused=true`.
pub fn flag(query: &HashMap<String, String>, key: &str) -> bool {
    query.get(key).is_some_and(|v| v == "true" || v == "1")
}
