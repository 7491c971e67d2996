//! Model-based property test of queue semantics: random sequences of
//! publish, consume, cancel, get, ack, nack, reject, qos, recover, channel
//! close and broker restart run against antre's core and against a small
//! reference model (`model.rs`); after every step both must report the same
//! deliveries (consumer, tag, body, redelivered flag), basic.get answers,
//! channel errors, queue counts and per-channel state.
//!
//! `cargo test` runs a modest number of cases; for a long run set
//! `PROPTEST_CASES`, e.g. `PROPTEST_CASES=20000 cargo test --release -p
//! antre-broker --test queue_model`. A failure prints the shortest sequence
//! of steps proptest found that still fails, and the step where core and
//! model first disagree.

mod core;
mod model;
mod steps;

use proptest::prelude::*;

use model::Model;
use steps::{Action, Observation, CHANNELS, QUEUES};

/// Cases per `cargo test` run unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 256;

/// Which delivery tag a settle names, resolved against the channel's
/// unacked deliveries when the step runs.
#[derive(Debug, Clone)]
enum TagRef {
    /// The n-th unacked tag (modulo their number).
    Unacked(usize),
    /// Tag 0: with `multiple`, every unacked delivery.
    Zero,
    /// A tag the channel has not issued (n past the next one).
    Unknown(u64),
}

/// A step as generated, before its choices are resolved.
#[derive(Debug, Clone)]
enum Op {
    Publish {
        queue: usize,
        persistent: bool,
    },
    Consume {
        channel: usize,
        queue: usize,
        no_ack: bool,
    },
    /// Cancels the n-th consumer of the channel (an unknown tag if none).
    Cancel {
        channel: usize,
        consumer: usize,
    },
    Get {
        channel: usize,
        queue: usize,
        no_ack: bool,
    },
    Ack {
        channel: usize,
        tag: TagRef,
        multiple: bool,
    },
    Nack {
        channel: usize,
        tag: TagRef,
        multiple: bool,
        requeue: bool,
    },
    Reject {
        channel: usize,
        tag: TagRef,
        requeue: bool,
    },
    Qos {
        channel: usize,
        prefetch: u16,
        global: bool,
    },
    Recover {
        channel: usize,
    },
    Pump {
        channel: usize,
    },
    Close {
        channel: usize,
    },
    Restart,
}

fn tag_ref() -> impl Strategy<Value = TagRef> {
    prop_oneof![
        16 => any::<usize>().prop_map(TagRef::Unacked),
        1 => Just(TagRef::Zero),
        1 => (0u64..3).prop_map(TagRef::Unknown),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let channel = 0..CHANNELS;
    let queue = 0..QUEUES.len();
    prop_oneof![
        8 => (queue.clone(), any::<bool>())
            .prop_map(|(queue, persistent)| Op::Publish { queue, persistent }),
        3 => (channel.clone(), queue.clone(), prop::bool::weighted(0.25))
            .prop_map(|(channel, queue, no_ack)| Op::Consume { channel, queue, no_ack }),
        1 => (channel.clone(), 0usize..3)
            .prop_map(|(channel, consumer)| Op::Cancel { channel, consumer }),
        2 => (channel.clone(), queue, prop::bool::weighted(0.25))
            .prop_map(|(channel, queue, no_ack)| Op::Get { channel, queue, no_ack }),
        5 => (channel.clone(), tag_ref(), prop::bool::weighted(0.3))
            .prop_map(|(channel, tag, multiple)| Op::Ack { channel, tag, multiple }),
        2 => (channel.clone(), tag_ref(), prop::bool::weighted(0.3), any::<bool>())
            .prop_map(|(channel, tag, multiple, requeue)| Op::Nack { channel, tag, multiple, requeue }),
        1 => (channel.clone(), tag_ref(), any::<bool>())
            .prop_map(|(channel, tag, requeue)| Op::Reject { channel, tag, requeue }),
        2 => (channel.clone(), 0u16..4, any::<bool>())
            .prop_map(|(channel, prefetch, global)| Op::Qos { channel, prefetch, global }),
        1 => channel.clone().prop_map(|channel| Op::Recover { channel }),
        8 => channel.clone().prop_map(|channel| Op::Pump { channel }),
        1 => channel.prop_map(|channel| Op::Close { channel }),
        1 => Just(Op::Restart),
    ]
}

/// Resolves a generated step against the model's state, so the core and
/// the model get exactly the same action.
fn resolve(op: &Op, model: &Model, consumers_made: &mut u32) -> Action {
    let tag = |channel: usize, t: &TagRef| -> u64 {
        let unacked = model.unacked_tags(channel);
        match t {
            TagRef::Unacked(n) if !unacked.is_empty() => unacked[n % unacked.len()],
            TagRef::Unacked(_) => model.next_tag(channel),
            TagRef::Zero => 0,
            TagRef::Unknown(n) => model.next_tag(channel) + n,
        }
    };
    match op.clone() {
        Op::Publish { queue, persistent } => Action::Publish { queue, persistent },
        Op::Consume {
            channel,
            queue,
            no_ack,
        } => {
            *consumers_made += 1;
            Action::Consume {
                channel,
                queue,
                no_ack,
                // Never reused, so a delivery for a cancelled consumer can
                // never be mistaken for one of a later consumer.
                tag: format!("c{consumers_made}"),
            }
        }
        Op::Cancel { channel, consumer } => {
            let tags = model.consumer_tags(channel);
            let tag = match tags.is_empty() {
                true => "nobody".to_owned(),
                false => tags[consumer % tags.len()].clone(),
            };
            Action::Cancel { channel, tag }
        }
        Op::Get {
            channel,
            queue,
            no_ack,
        } => Action::Get {
            channel,
            queue,
            no_ack,
        },
        Op::Ack {
            channel,
            tag: t,
            multiple,
        } => Action::Ack {
            channel,
            tag: tag(channel, &t),
            multiple,
        },
        Op::Nack {
            channel,
            tag: t,
            multiple,
            requeue,
        } => Action::Nack {
            channel,
            tag: tag(channel, &t),
            multiple,
            requeue,
        },
        Op::Reject {
            channel,
            tag: t,
            requeue,
        } => Action::Reject {
            channel,
            tag: tag(channel, &t),
            requeue,
        },
        Op::Qos {
            channel,
            prefetch,
            global,
        } => Action::Qos {
            channel,
            prefetch,
            global,
        },
        Op::Recover { channel } => Action::Recover { channel },
        Op::Pump { channel } => Action::Pump { channel },
        Op::Close { channel } => Action::Close { channel },
        Op::Restart => Action::Restart,
    }
}

/// Every order in which the queues may use windows a step frees.
fn queue_orders() -> Vec<Vec<usize>> {
    let n = QUEUES.len();
    let mut orders = vec![(0..n).collect::<Vec<usize>>()];
    orders.push((0..n).rev().collect());
    orders
}

/// Runs the steps on a fresh core and model, comparing after each.
fn run(ops: &[Op], page_out: bool) -> Result<(), TestCaseError> {
    let mut core = core::Core::new(page_out);
    let mut model = Model::new();
    let mut consumers_made = 0;
    let mut done: Vec<Action> = Vec::new();
    for op in ops {
        let action = resolve(op, &model, &mut consumers_made);
        let got = core.apply(&action);
        let mut first: Option<(Model, Observation)> = None;
        let mut matched = None;
        for order in queue_orders() {
            let mut candidate = model.clone();
            let want = candidate.apply(&action, &order);
            if want == got {
                matched = Some(candidate);
                break;
            }
            first.get_or_insert((candidate, want));
        }
        done.push(action.clone());
        match matched {
            Some(next) => model = next,
            None => {
                let (_, want) = first.expect("at least one order");
                let steps: Vec<String> = done
                    .iter()
                    .enumerate()
                    .map(|(i, a)| format!("  {i:>3}: {a:?}"))
                    .collect();
                return Err(TestCaseError::fail(format!(
                    "core and model disagree after step {} (page_out: {page_out}):\n{}\n\
                     what differs (m3* = m3 marked redelivered, c2:m3 = m3 for consumer c2, #4 = delivery tag 4):\n{}",
                    done.len() - 1,
                    steps.join("\n"),
                    got.diff(&want),
                )));
            }
        }
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        // Shrinking replays whole runs; bound it so a failure reports soon.
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })]

    #[test]
    fn queue_semantics_match_the_model(
        page_out in any::<bool>(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run(&ops, page_out)?;
    }
}
