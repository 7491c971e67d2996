//! The stream protocol's management commands on a vhost: creating and
//! deleting streams and super streams, routing and partitions. A stream is
//! the same object AMQP 0-9-1 declares with `x-queue-type: stream`; a super
//! stream is what RabbitMQ makes of it: a direct exchange of that name
//! whose bindings (with `x-stream-partition-order`) lead to its partition
//! streams.

use std::sync::Arc;

use antre_amqp::{FieldTable, FieldValue};
use antre_broker::exchange::Destination;
use antre_broker::vhost::{DeclaredQueue, ExchangeDeclaration, QueueDeclaration};
use antre_broker::{BrokerError, Vhost};
use antre_stream_proto::frame::{code, Properties};

/// The binding argument that orders a super stream's partitions.
const PARTITION_ORDER: &str = "x-stream-partition-order";

/// The stream protocol's creation arguments as declaration arguments.
pub fn stream_arguments(arguments: &Properties) -> Result<FieldTable, u16> {
    let mut table = FieldTable::default();
    table.insert("x-queue-type", FieldValue::string("stream"));
    for (k, v) in arguments {
        let int = || v.parse::<i64>().map_err(|_| code::PRECONDITION_FAILED);
        match k.as_str() {
            "max-length-bytes" => table.insert("x-max-length-bytes", FieldValue::I64(int()?)),
            "stream-max-segment-size-bytes" => {
                table.insert("x-stream-max-segment-size-bytes", FieldValue::I64(int()?))
            }
            "stream-filter-size-bytes" => {
                table.insert("x-stream-filter-size-bytes", FieldValue::I64(int()?))
            }
            "max-age" => table.insert("x-max-age", FieldValue::string(v.clone())),
            "initial-cluster-size" => {
                table.insert("x-initial-cluster-size", FieldValue::I64(int()?))
            }
            "queue-leader-locator" => {
                table.insert("x-queue-leader-locator", FieldValue::string(v.clone()))
            }
            // RabbitMQ ignores arguments it does not know.
            _ => {}
        }
    }
    Ok(table)
}

/// What a refusal of the core is as a stream protocol response code.
pub fn response_code(e: &BrokerError) -> u16 {
    match e {
        BrokerError::NotFound(_) => code::STREAM_DOES_NOT_EXIST,
        BrokerError::AccessRefused(_) => code::ACCESS_REFUSED,
        BrokerError::PreconditionFailed(_) | BrokerError::ResourceLocked(_) => {
            code::PRECONDITION_FAILED
        }
        _ => code::INTERNAL_ERROR,
    }
}

/// Creates a stream; STREAM_ALREADY_EXISTS when the name is taken.
pub fn create(vhost: &Vhost, name: &str, arguments: &Properties) -> u16 {
    if vhost.has_queue(name) {
        return code::STREAM_ALREADY_EXISTS;
    }
    let arguments = match stream_arguments(arguments) {
        Ok(a) => a,
        Err(c) => return c,
    };
    let declaration = QueueDeclaration {
        name: name.to_owned(),
        durable: true,
        exclusive: false,
        auto_delete: false,
        arguments,
    };
    match vhost.declare_queue(declaration, false, 0) {
        Ok((DeclaredQueue::Stream(_), _)) => code::OK,
        Ok(_) => code::PRECONDITION_FAILED,
        Err(e) => response_code(&e),
    }
}

/// Deletes a stream (not a classic queue of that name).
pub fn delete(vhost: &Vhost, name: &str) -> u16 {
    if vhost.stream(name).is_none() {
        return code::STREAM_DOES_NOT_EXIST;
    }
    match vhost.delete_queue(name, false, false, 0) {
        Ok(_) => code::OK,
        Err(e) => response_code(&e),
    }
}

/// A super stream's partitions, in partition order, with their binding keys.
fn partitions_of(vhost: &Vhost, super_stream: &str) -> Option<Vec<(i64, String, String)>> {
    let exchange = vhost
        .exchanges()
        .into_iter()
        .find(|e| e.name == super_stream)?;
    let mut parts: Vec<(i64, String, String)> = exchange
        .bindings
        .iter()
        .filter_map(|b| match &b.destination {
            Destination::Queue(q) if vhost.stream(q).is_some() => {
                let order = b
                    .arguments
                    .get(PARTITION_ORDER)
                    .and_then(FieldValue::as_i64)
                    .unwrap_or(i64::MAX);
                Some((order, q.clone(), b.routing_key.clone()))
            }
            _ => None,
        })
        .collect();
    parts.sort();
    parts.dedup_by(|a, b| a.1 == b.1);
    Some(parts)
}

/// The partitions of a super stream.
pub fn partitions(vhost: &Vhost, super_stream: &str) -> (u16, Vec<String>) {
    match partitions_of(vhost, super_stream) {
        Some(p) => (code::OK, p.into_iter().map(|(_, s, _)| s).collect()),
        None => (code::STREAM_DOES_NOT_EXIST, Vec::new()),
    }
}

/// The partitions a routing key goes to (the direct exchange's rule).
pub fn route(vhost: &Vhost, super_stream: &str, routing_key: &str) -> (u16, Vec<String>) {
    match partitions_of(vhost, super_stream) {
        Some(p) => (
            code::OK,
            p.into_iter()
                .filter(|(_, _, key)| key == routing_key)
                .map(|(_, s, _)| s)
                .collect(),
        ),
        None => (code::STREAM_DOES_NOT_EXIST, Vec::new()),
    }
}

/// Creates a super stream: its partitions, its exchange and the bindings.
pub fn create_super_stream(
    vhost: &Arc<Vhost>,
    name: &str,
    partitions: &[String],
    binding_keys: &[String],
    arguments: &Properties,
) -> u16 {
    if partitions.is_empty() || partitions.len() != binding_keys.len() {
        return code::PRECONDITION_FAILED;
    }
    if vhost.has_exchange(name) || partitions.iter().any(|p| vhost.has_queue(p)) {
        return code::STREAM_ALREADY_EXISTS;
    }
    for p in partitions {
        let c = create(vhost, p, arguments);
        if c != code::OK {
            return c;
        }
    }
    let exchange = ExchangeDeclaration {
        name: name.to_owned(),
        kind: "direct".into(),
        durable: true,
        auto_delete: false,
        internal: false,
        arguments: FieldTable::default(),
    };
    if let Err(e) = vhost.declare_exchange(exchange, false) {
        return response_code(&e);
    }
    for (order, (p, key)) in partitions.iter().zip(binding_keys).enumerate() {
        let mut args = FieldTable::default();
        args.insert(PARTITION_ORDER, FieldValue::I64(order as i64));
        if let Err(e) = vhost.bind(name, Destination::Queue(p.clone()), key, args, 0) {
            return response_code(&e);
        }
    }
    code::OK
}

/// Deletes a super stream: its partitions and its exchange.
pub fn delete_super_stream(vhost: &Vhost, name: &str) -> u16 {
    let Some(parts) = partitions_of(vhost, name) else {
        return code::STREAM_DOES_NOT_EXIST;
    };
    for (_, p, _) in parts {
        let _ = vhost.delete_queue(&p, false, false, 0);
    }
    match vhost.delete_exchange(name, false) {
        Ok(()) => code::OK,
        Err(e) => response_code(&e),
    }
}
