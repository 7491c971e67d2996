//! The stream protocol's management commands on a vhost: creating and
//! deleting streams and super streams, routing and partitions. A stream is
//! the same object AMQP 0-9-1 declares with `x-queue-type: stream`; a super
//! stream is what RabbitMQ makes of it: a direct exchange of that name
//! whose bindings (with `x-stream-partition-order`) lead to its partition
//! streams. On a cluster node each of these definitions is metadata: it is
//! proposed to the metadata group, which every node applies (as AMQP's
//! declares are), and a stream's members are picked there.

use std::sync::Arc;

use antre_amqp::{FieldTable, FieldValue};
use antre_broker::cluster::{MetaCommand, MetaError, WireTable};
use antre_broker::exchange::Destination;
use antre_broker::vhost::{DeclaredQueue, ExchangeDeclaration, QueueDeclaration};
use antre_broker::{Broker, BrokerError, Vhost};
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

/// The response code of a change the cluster's metadata group refused
/// or could not commit.
fn meta_code(e: &MetaError) -> u16 {
    match e {
        MetaError::Broker(e) => response_code(e),
        MetaError::Access(_) => code::ACCESS_REFUSED,
        MetaError::Unavailable(_) => code::STREAM_NOT_AVAILABLE,
    }
}

/// Makes a definition change: proposed to the metadata group on a cluster
/// node (`command`), made here on a single node (`local`).
fn change(
    broker: &Broker,
    command: impl FnOnce() -> MetaCommand,
    local: impl FnOnce() -> Result<(), BrokerError>,
) -> Result<(), u16> {
    match broker.metadata_log() {
        Some(log) => log.propose(command()).map(drop).map_err(|e| meta_code(&e)),
        None => local().map_err(|e| response_code(&e)),
    }
}

/// Creates a stream; STREAM_ALREADY_EXISTS when the name is taken.
pub fn create(broker: &Broker, vhost: &Vhost, name: &str, arguments: &Properties) -> u16 {
    if vhost.has_queue(name) {
        return code::STREAM_ALREADY_EXISTS;
    }
    let arguments = match stream_arguments(arguments) {
        Ok(a) => a,
        Err(c) => return c,
    };
    let mut declared = None;
    let changed = change(
        broker,
        || MetaCommand::DeclareQueue {
            vhost: vhost.name.clone(),
            name: name.to_owned(),
            durable: true,
            auto_delete: false,
            arguments: WireTable(arguments.clone()),
            owner: broker
                .place_new_queue(vhost, name, &arguments)
                .or_else(|| broker.node_name().map(str::to_owned))
                .unwrap_or_default(),
        },
        || {
            let declaration = QueueDeclaration {
                name: name.to_owned(),
                durable: true,
                exclusive: false,
                auto_delete: false,
                arguments: arguments.clone(),
            };
            declared = Some(vhost.declare_queue(declaration, false, 0)?.0);
            Ok(())
        },
    );
    match changed {
        Err(c) => c,
        // A name a classic or quorum queue took meanwhile.
        Ok(()) if vhost.stream(name).is_none() => code::PRECONDITION_FAILED,
        Ok(()) if matches!(declared, Some(DeclaredQueue::Queue(_))) => code::PRECONDITION_FAILED,
        Ok(()) => code::OK,
    }
}

/// Deletes a stream (not a classic queue of that name).
pub fn delete(broker: &Broker, vhost: &Vhost, name: &str) -> u16 {
    if vhost.stream(name).is_none() {
        return code::STREAM_DOES_NOT_EXIST;
    }
    let changed = change(
        broker,
        || MetaCommand::DeleteQueue {
            vhost: vhost.name.clone(),
            name: name.to_owned(),
            if_unused: false,
            if_empty: false,
        },
        || vhost.delete_queue(name, false, false, 0).map(drop),
    );
    changed.err().unwrap_or(code::OK)
}

/// A super stream's partitions, in partition order, with their binding keys.
fn partitions_of(vhost: &Vhost, super_stream: &str) -> Option<Vec<(i64, String, String)>> {
    let exchange = vhost.exchange(super_stream)?;
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
    broker: &Broker,
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
        let c = create(broker, vhost, p, arguments);
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
    let declared = change(
        broker,
        || MetaCommand::DeclareExchange {
            vhost: vhost.name.clone(),
            name: exchange.name.clone(),
            kind: exchange.kind.clone(),
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: WireTable::default(),
        },
        || vhost.declare_exchange(exchange.clone(), false).map(drop),
    );
    if let Err(c) = declared {
        return c;
    }
    for (order, (p, key)) in partitions.iter().zip(binding_keys).enumerate() {
        let mut args = FieldTable::default();
        args.insert(PARTITION_ORDER, FieldValue::I64(order as i64));
        let bound = change(
            broker,
            || MetaCommand::Binding {
                unbind: false,
                vhost: vhost.name.clone(),
                source: name.to_owned(),
                destination: p.clone(),
                to_exchange: false,
                routing_key: key.clone(),
                arguments: WireTable(args.clone()),
                node: None,
            },
            || vhost.bind(name, Destination::Queue(p.clone()), key, args.clone(), 0),
        );
        if let Err(c) = bound {
            return c;
        }
    }
    code::OK
}

/// Deletes a super stream: its partitions and its exchange.
pub fn delete_super_stream(broker: &Broker, vhost: &Vhost, name: &str) -> u16 {
    let Some(parts) = partitions_of(vhost, name) else {
        return code::STREAM_DOES_NOT_EXIST;
    };
    for (_, p, _) in parts {
        let _ = delete(broker, vhost, &p);
    }
    let deleted = change(
        broker,
        || MetaCommand::DeleteExchange {
            vhost: vhost.name.clone(),
            name: name.to_owned(),
            if_unused: false,
        },
        || vhost.delete_exchange(name, false),
    );
    deleted.err().unwrap_or(code::OK)
}
