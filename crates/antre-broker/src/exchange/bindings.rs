//! The bindings of one exchange, indexed so that binding, unbinding and
//! removing a destination cost O(log n) whatever the number of bindings,
//! and a direct exchange routes with one lookup rather than a scan.

use std::collections::{BTreeMap, HashMap};

use antre_amqp::FieldTable;

use super::{Binding, Destination};
use crate::definitions::table_to_json;

/// A binding's identity: bindings with the same destination, key and
/// arguments (compared by value, as RabbitMQ compares them) are one.
/// Ordered by destination first, so one destination's bindings are a range.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BindingKey {
    destination: Destination,
    routing_key: String,
    /// The arguments in a canonical form: sorted keys, integers of every
    /// width as one number.
    arguments: String,
}

impl BindingKey {
    fn of(b: &Binding) -> BindingKey {
        BindingKey {
            destination: b.destination.clone(),
            routing_key: b.routing_key.clone(),
            arguments: canonical(&b.arguments),
        }
    }
}

fn canonical(arguments: &FieldTable) -> String {
    if arguments.is_empty() {
        return String::new();
    }
    serde_json::Value::Object(table_to_json(arguments)).to_string()
}

/// An exchange's bindings.
#[derive(Debug, Clone, Default)]
pub struct BindingTable {
    all: BTreeMap<BindingKey, Binding>,
    /// Destinations by binding key, for routing by equality (direct).
    by_routing_key: HashMap<String, Vec<Destination>>,
}

impl BindingTable {
    /// Adds a binding; false if an equal one was there.
    pub fn insert(&mut self, binding: Binding) -> bool {
        let key = BindingKey::of(&binding);
        if self.all.contains_key(&key) {
            return false;
        }
        self.by_routing_key
            .entry(binding.routing_key.clone())
            .or_default()
            .push(binding.destination.clone());
        self.all.insert(key, binding);
        true
    }

    /// Whether a binding equal to `binding` is here.
    pub fn contains(&self, binding: &Binding) -> bool {
        self.all.contains_key(&BindingKey::of(binding))
    }

    /// Removes the binding equal to `binding`; false if there was none.
    pub fn remove(&mut self, binding: &Binding) -> bool {
        match self.all.remove(&BindingKey::of(binding)) {
            Some(gone) => {
                self.unindex(&gone);
                true
            }
            None => false,
        }
    }

    /// Removes every binding to `destination` and returns them.
    pub fn remove_destination(&mut self, destination: &Destination) -> Vec<Binding> {
        let keys: Vec<BindingKey> = self.range(destination).map(|(k, _)| k.clone()).collect();
        let mut removed = Vec::with_capacity(keys.len());
        for k in &keys {
            if let Some(gone) = self.all.remove(k) {
                self.unindex(&gone);
                removed.push(gone);
            }
        }
        removed
    }

    /// Whether some binding points at `destination`.
    pub fn has_destination(&self, destination: &Destination) -> bool {
        self.range(destination).next().is_some()
    }

    fn range<'a>(
        &'a self,
        destination: &Destination,
    ) -> impl Iterator<Item = (&'a BindingKey, &'a Binding)> + 'a {
        let start = BindingKey {
            destination: destination.clone(),
            routing_key: String::new(),
            arguments: String::new(),
        };
        let destination = destination.clone();
        self.all
            .range(start..)
            .take_while(move |(k, _)| k.destination == destination)
    }

    fn unindex(&mut self, gone: &Binding) {
        if let Some(list) = self.by_routing_key.get_mut(&gone.routing_key) {
            if let Some(i) = list.iter().position(|d| *d == gone.destination) {
                list.swap_remove(i);
            }
            if list.is_empty() {
                self.by_routing_key.remove(&gone.routing_key);
            }
        }
    }

    /// The destinations bound with exactly `routing_key` (a destination
    /// bound twice with other arguments appears twice).
    pub fn with_routing_key(&self, routing_key: &str) -> &[Destination] {
        self.by_routing_key
            .get(routing_key)
            .map_or(&[], Vec::as_slice)
    }

    /// Every binding, ordered by destination.
    pub fn iter(&self) -> impl Iterator<Item = &Binding> {
        self.all.values()
    }

    /// How many bindings there are.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }
}

impl IntoIterator for BindingTable {
    type Item = Binding;
    type IntoIter = std::collections::btree_map::IntoValues<BindingKey, Binding>;

    fn into_iter(self) -> Self::IntoIter {
        self.all.into_values()
    }
}

impl<'a> IntoIterator for &'a BindingTable {
    type Item = &'a Binding;
    type IntoIter = std::collections::btree_map::Values<'a, BindingKey, Binding>;

    fn into_iter(self) -> Self::IntoIter {
        self.all.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use antre_amqp::FieldValue;

    fn binding(queue: &str, key: &str, args: &[(&str, FieldValue)]) -> Binding {
        Binding {
            destination: Destination::Queue(queue.into()),
            routing_key: key.into(),
            arguments: args.iter().cloned().collect(),
        }
    }

    #[test]
    fn equal_bindings_are_one_by_value() {
        let mut t = BindingTable::default();
        assert!(t.insert(binding("q", "k", &[("x", FieldValue::I32(1))])));
        assert!(!t.insert(binding("q", "k", &[("x", FieldValue::I64(1))])));
        assert!(t.insert(binding("q", "k", &[("x", FieldValue::I64(2))])));
        assert!(t.insert(binding("q", "other", &[])));
        assert_eq!(t.len(), 3);
        assert_eq!(t.with_routing_key("k").len(), 2);
        assert!(t.remove(&binding("q", "k", &[("x", FieldValue::U8(1))])));
        assert!(!t.remove(&binding("q", "k", &[("x", FieldValue::U8(1))])));
        assert_eq!(t.with_routing_key("k").len(), 1);
    }

    #[test]
    fn a_destination_is_removed_with_all_its_bindings() {
        let mut t = BindingTable::default();
        for q in ["a", "b", "c"] {
            t.insert(binding(q, "k1", &[]));
            t.insert(binding(q, "k2", &[]));
        }
        let b = Destination::Queue("b".into());
        assert!(t.has_destination(&b));
        assert_eq!(t.remove_destination(&b).len(), 2);
        assert!(!t.has_destination(&b));
        assert_eq!(t.len(), 4);
        assert_eq!(t.with_routing_key("k1").len(), 2);
        let exchange_b = Destination::Exchange("b".into());
        assert!(t.remove_destination(&exchange_b).is_empty());
    }
}
