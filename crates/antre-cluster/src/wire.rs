//! Frames on the cluster link: a 4-byte big-endian length, then a JSON
//! document, except for a quorum queue's append entries (binary, see
//! [`encode_request`]).
//!
//! JSON rather than a compact binary encoding (postcard, bincode) because
//! the metadata carries `serde_json::Value`s (policy definitions, the
//! arguments in definitions snapshots), which formats that are not
//! self-describing cannot decode; metadata changes are rare and small, so
//! the size and speed of the encoding do not matter here, and a frame can
//! be read in a packet capture.

use std::io;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::membership::{MemberChange, MembershipError};
use crate::queue_group::QueueTypeConfig;
use crate::{NodeId, Proposal, TypeConfig};

/// A queue group's snapshot chunk with its bytes in base64. serde writes
/// a `Vec<u8>` as an array of numbers: a 3 MiB chunk of a stream's
/// snapshot (which carries the whole stream) was some 12 MB of JSON, and
/// a member catching up took seconds per chunk.
mod chunk_base64 {
    use openraft::raft::InstallSnapshotRequest;
    use openraft::{BasicNode, SnapshotMeta, Vote};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::queue_group::{Body, QueueTypeConfig};
    use crate::NodeId;

    /// openraft's request, with the bytes as a [`Body`] (base64 in JSON).
    #[derive(Serialize, Deserialize)]
    struct Chunk<V, M> {
        vote: V,
        meta: M,
        offset: u64,
        data: Body,
        done: bool,
    }

    pub fn serialize<S: Serializer>(
        r: &InstallSnapshotRequest<QueueTypeConfig>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        Chunk {
            vote: &r.vote,
            meta: &r.meta,
            offset: r.offset,
            data: Body(bytes::Bytes::copy_from_slice(&r.data)),
            done: r.done,
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<InstallSnapshotRequest<QueueTypeConfig>, D::Error> {
        let r = Chunk::<Vote<NodeId>, SnapshotMeta<NodeId, BasicNode>>::deserialize(d)?;
        Ok(InstallSnapshotRequest {
            vote: r.vote,
            meta: r.meta,
            offset: r.offset,
            data: r.data.0.to_vec(),
            done: r.done,
        })
    }
}

/// The largest frame either side accepts once the peer is authenticated
/// (the handshake has its own, small limit): a quorum queue's entry holding
/// one message of the largest size a client may publish (512 MiB at most)
/// goes to a follower in one frame. Entries and append requests are
/// otherwise kept to a few MiB (`queue_group::ENTRY_BYTES`, `APPEND_BYTES`).
pub const MAX_FRAME: usize = 576 << 20;

/// Writes one frame.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let mut buf = vec![0; 4];
    serde_json::to_writer(&mut buf, msg).map_err(io::Error::other)?;
    write_body(w, buf).await
}

/// Writes a frame whose body follows the 4 bytes reserved at the start of
/// `buf`, where its length goes.
async fn write_body<W: AsyncWrite + Unpin>(w: &mut W, mut buf: Vec<u8>) -> io::Result<()> {
    set_length(&mut buf)?;
    w.write_all(&buf).await?;
    w.flush().await
}

/// Puts the length of the body that follows `buf`'s first 4 bytes there.
fn set_length(buf: &mut [u8]) -> io::Result<()> {
    let body = buf.len() - 4;
    if body > MAX_FRAME {
        return Err(io::Error::other(format!(
            "frame of {body} bytes is over {MAX_FRAME}"
        )));
    }
    let len = u32::try_from(body).map_err(io::Error::other)?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// The body length a frame's 4-byte head announces, refused past
/// [`MAX_FRAME`].
pub fn body_length(head: [u8; 4]) -> io::Result<usize> {
    length_within(head, MAX_FRAME)
}

fn length_within(head: [u8; 4], max: usize) -> io::Result<usize> {
    let len = u32::from_be_bytes(head) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over {max}"),
        ));
    }
    Ok(len)
}

/// Decodes a frame's body.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> io::Result<T> {
    serde_json::from_slice(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads one frame.
pub async fn read_frame<R, T>(r: &mut R) -> io::Result<T>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    read_frame_within(r, MAX_FRAME).await
}

/// Reads one frame of at most `max` bytes, refused as soon as its head
/// announces more (before anything is allocated for it): what a peer that
/// has not proved the secret yet may send is bounded by the handshake's
/// size, not by the largest frame a member may.
pub async fn read_frame_within<R, T>(r: &mut R, max: usize) -> io::Result<T>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    decode_body(&read_body(r, max).await?)
}

async fn read_body<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> io::Result<Vec<u8>> {
    let mut head = [0u8; 4];
    r.read_exact(&mut head).await?;
    let mut body = vec![0u8; length_within(head, max)?];
    r.read_exact(&mut body).await?;
    Ok(body)
}

/// The first byte of a binary [`Request::QueueAppend`] frame; a JSON
/// document starts with `{` or `"`.
const QUEUE_APPEND: u8 = 0x01;

/// A request's whole frame, length first: a quorum queue's append entries
/// in binary (they carry the messages being published, see
/// [`crate::queue_group::codec`]), any other as JSON. Encoded whole
/// before it is sent, so that a sender cut off halfway can finish it later
/// (see [`crate::network::Connection`]).
pub fn encode_request(request: &Request) -> io::Result<Vec<u8>> {
    let mut buf = vec![0, 0, 0, 0];
    match request {
        Request::QueueAppend { group, rpc } => {
            buf.push(QUEUE_APPEND);
            crate::queue_group::codec::encode_append(group, rpc, &mut buf)
                .map_err(io::Error::other)?;
        }
        other => serde_json::to_writer(&mut buf, other).map_err(io::Error::other)?,
    }
    set_length(&mut buf)?;
    Ok(buf)
}

/// Reads what [`encode_request`] encoded.
pub async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Request> {
    let body = read_body(r, MAX_FRAME).await?;
    let invalid =
        |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    if body.first() == Some(&QUEUE_APPEND) {
        let (group, rpc) =
            crate::queue_group::codec::decode_append(&body[1..]).map_err(|e| invalid(&e))?;
        return Ok(Request::QueueAppend { group, rpc });
    }
    serde_json::from_slice(&body).map_err(|e| invalid(&e))
}

/// What a node asks another once the link is authenticated.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Raft: append entries (or heartbeat).
    Append(AppendEntriesRequest<TypeConfig>),
    /// Raft: request a vote.
    Vote(VoteRequest<NodeId>),
    /// Raft: a snapshot chunk.
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A follower hands its leader a metadata change to commit.
    Propose(Proposal),
    /// Liveness: every node pings every peer each second, so that each
    /// knows which peers run (Raft alone only links followers to their
    /// leader).
    Ping,
    /// A membership change, for the leader (a node that does not lead
    /// hands it on); also what a node started with `--cluster-join` sends.
    Members(MemberChange),
    /// Raft of a quorum queue's group: append entries.
    QueueAppend {
        /// The group ([`crate::queue_group`]).
        group: String,
        /// The request.
        rpc: AppendEntriesRequest<QueueTypeConfig>,
    },
    /// Raft of many quorum queues' groups: their empty appends to this
    /// node, together ([`crate::queue_group::heartbeats`]).
    QueueHeartbeats {
        /// How long the sender waits for the answer.
        within_ms: u64,
        /// Each group's append.
        beats: Vec<(String, AppendEntriesRequest<QueueTypeConfig>)>,
    },
    /// Leases of idle quorum queues' groups the sender leads, for their
    /// members on this node, instead of heartbeats
    /// ([`crate::queue_group::leases`]).
    QueueLeases(Vec<crate::queue_group::leases::Lease>),
    /// Raft of a quorum queue's group: request a vote.
    QueueVote {
        /// The group.
        group: String,
        /// The request.
        rpc: VoteRequest<NodeId>,
    },
    /// Raft of a quorum queue's group: a snapshot chunk.
    QueueSnapshot {
        /// The group.
        group: String,
        /// The request.
        #[serde(with = "chunk_base64")]
        rpc: InstallSnapshotRequest<QueueTypeConfig>,
    },
    /// Replica management of a quorum queue's group: for its leader
    /// (or, for an election, the member that should stand).
    QueueMembers {
        /// The group.
        group: String,
        /// What to do.
        op: crate::queue_group::members::GroupOp,
    },
    /// A node's single-active-consumer members of replicated streams this
    /// node leads, for each stream's coordinator of its groups
    /// ([`antre_broker::stream::sac`]); the streams' reports together
    /// ([`crate::queue_group::consumers`]).
    StreamConsumers {
        /// How long the sender waits for the answer.
        within_ms: u64,
        /// Each stream's group, and the node's members of it.
        reports: Vec<(String, antre_broker::stream::sac::Report)>,
    },
    /// For the metadata leader: how far it applied the metadata (a node
    /// that found no queue by a publish's name applies that much before
    /// it calls the publish unroutable; see
    /// [`antre_broker::cluster::MetadataLog::catch_up`]). Sent only once
    /// feature flag `metadata_read_index` is enabled.
    ReadIndex,
    /// Answer once this node applied the metadata up to `index` (within
    /// two seconds): a change made through the asking node is answered
    /// to its client once every running member applied it (see
    /// [`antre_broker::cluster::MetadataLog::propose`]). Sent only once
    /// feature flag `metadata_applied_everywhere` is enabled.
    Applied {
        /// The metadata log index.
        index: u64,
    },
    /// Turns this connection into a forwarding data link: from here on
    /// both sides speak [`crate::data_wire`] frames (see
    /// [`crate::forward`]). Not answered.
    DataLink,
    /// The node's own figures (memory, disk, alarms, connections), for
    /// a management API that shows every node, as RabbitMQ's does.
    NodeInfo,
    /// The node's own rows of a management listing (its connections,
    /// their channels, the consumers of the queues it owns), for a
    /// listing of the whole cluster, as RabbitMQ's management API gives
    /// whichever node is asked.
    Listing {
        /// Which listing.
        what: Listing,
        /// Only the rows of this vhost.
        vhost: Option<String>,
        /// Only the row of the object of this name (a connection, a
        /// channel, a queue; for consumers, those of the queue of this
        /// name), for a page that shows one.
        #[serde(default)]
        name: Option<String>,
    },
    /// Act on a queue the node owns for a management API on another
    /// member, as `user` (whose permissions the node checks), as
    /// RabbitMQ's API gets from or purges a queue whichever node is
    /// asked.
    QueueAction {
        /// The vhost.
        vhost: String,
        /// The queue.
        queue: String,
        /// The user the asking member authenticated.
        user: String,
        /// The user's tags.
        tags: Vec<String>,
        /// What to do.
        action: QueueAction,
    },
    /// Close the node's client connection `name` (320 CONNECTION_FORCED
    /// with `reason`), for a management API that closes any member's
    /// connection, as RabbitMQ's does.
    CloseConnection {
        /// The connection's name, as its listing shows it.
        name: String,
        /// The reply text's reason.
        reason: String,
    },
    /// Would this node vote for the sender, whose log ends at `last_log`,
    /// in the metadata group (`group` none) or a quorum queue's group?
    /// Asked before standing for election, so that a member that cannot
    /// win (cut off, or behind) does not raise the term (see
    /// [`crate::election`]). Changes nothing on the answering node.
    PreVote {
        /// The quorum queue's group, or none for the metadata group.
        group: Option<String>,
        /// The leader the sender found dead ([`crate::failover`]), if
        /// it did: no longer counted as a live leader.
        dead: Option<NodeId>,
        /// The last entry of the sender's log.
        last_log: Option<openraft::LogId<NodeId>>,
    },
}

/// What a member's management API asks a queue's owner to do
/// ([`Request::QueueAction`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum QueueAction {
    /// `POST /api/queues/{vhost}/{name}/get` with this body.
    Get(serde_json::Value),
    /// `DELETE /api/queues/{vhost}/{name}/contents`.
    Purge,
}

/// A management listing a node answers for its own objects only
/// ([`Request::Listing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Listing {
    /// Its clients' connections.
    Connections,
    /// Their channels.
    Channels,
    /// The consumers of the queues it owns (a forwarded client's among
    /// them; the node the client is connected to does not list those).
    Consumers,
    /// The queues it owns, with their figures (messages, consumers,
    /// counters and rates), which only the owner knows.
    Queues,
    /// Each vhost's messages in the queues it owns and its connections
    /// in the vhost.
    Vhosts,
    /// The samples of its own counters that it keeps for the overview's
    /// charts, oldest first.
    Samples,
    /// The Raft figures of its quorum queue and stream replicas
    /// (`rabbitmq-queues quorum_status`).
    RaftMembers,
}

/// The answer to a [`Request`], of the same kind.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    /// To [`Request::Append`].
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To [`Request::Vote`].
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To [`Request::Snapshot`].
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// To [`Request::Propose`].
    Propose(Result<(), ProposeRefusal>),
    /// To [`Request::Ping`].
    Pong,
    /// To [`Request::ReadIndex`]: the leader's last applied metadata
    /// index, or why it cannot say (it does not lead).
    ReadIndex(Result<u64, String>),
    /// To [`Request::Applied`]: whether this node applied that much in
    /// time.
    Applied(bool),
    /// To [`Request::Members`].
    Members(Result<(), MembershipError>),
    /// To [`Request::QueueAppend`].
    QueueAppend(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To [`Request::QueueHeartbeats`]: each group's answer, in order
    /// ([`Response::QueueAppend`], [`Response::NoGroup`] or
    /// [`Response::Late`]).
    QueueHeartbeats(Vec<Response>),
    /// In [`Response::QueueHeartbeats`]: the named group's Raft did not
    /// answer within the batch's time (to the sender, as a request that
    /// got no answer).
    Late(String),
    /// To [`Request::QueueLeases`]: the groups whose lease was not taken
    /// (their leader sends a Raft heartbeat instead).
    QueueLeases(Vec<String>),
    /// To [`Request::QueueVote`].
    QueueVote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To [`Request::QueueSnapshot`].
    QueueSnapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// To [`Request::QueueMembers`]: whether anything changed.
    QueueMembers(Result<bool, crate::queue_group::members::GroupOpError>),
    /// To [`Request::StreamConsumers`], for each report in order: for
    /// each member, whether it should be active; or why the leader could
    /// not say.
    StreamConsumers(Vec<Result<Vec<bool>, String>>),
    /// This node runs no replica of the named group (not started yet, or
    /// the queue is gone): to the sender, the member is unreachable.
    NoGroup(String),
    /// To [`Request::NodeInfo`]: a JSON object of the node's figures, in
    /// the fields of the management API's `/api/nodes` (empty when the
    /// node's server has not set [`crate::Cluster::serve_management`]).
    NodeInfo(serde_json::Value),
    /// To [`Request::Listing`]: the rows, as the node's management API
    /// renders them (none when its server has not set
    /// [`crate::Cluster::serve_management`]).
    Listing(Vec<serde_json::Value>),
    /// To [`Request::QueueAction`]: the API's answer, or its error's
    /// HTTP status and reason.
    QueueAction(Result<serde_json::Value, (u16, String)>),
    /// To [`Request::CloseConnection`]: whether the node had such a
    /// connection (and closes it).
    CloseConnection(bool),
    /// To [`Request::PreVote`]: whether it would vote for the sender.
    PreVote(crate::election::PreVoteAnswer),
}

/// Why a node did not commit a forwarded change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProposeRefusal {
    /// It is not the leader (it names the one it knows, if any).
    NotLeader(Option<NodeId>),
    /// It leads but could not confirm that a quorum follows it: it
    /// appended nothing, so the change may be proposed again.
    NoQuorum(String),
    /// It is the leader but could not commit (no quorum in time).
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, &ProposeRefusal::NotLeader(Some(7)))
            .await
            .unwrap();
        let got: ProposeRefusal = read_frame(&mut b).await.unwrap();
        assert_eq!(got, ProposeRefusal::NotLeader(Some(7)));
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_frame::<_, ProposeRefusal>(&mut b).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_queue_snapshot_chunk_travels_in_base64() {
        let rpc = InstallSnapshotRequest::<QueueTypeConfig> {
            vote: openraft::Vote::new(3, 7),
            meta: openraft::SnapshotMeta::default(),
            offset: 9,
            data: vec![0, 255, 1, 2],
            done: true,
        };
        let request = Request::QueueSnapshot {
            group: "g".into(),
            rpc,
        };
        let json = serde_json::to_string(&request).unwrap();
        assert!(json.contains("\"AP8BAg==\""), "{json}");
        match serde_json::from_str(&json).unwrap() {
            Request::QueueSnapshot { group, rpc } => {
                assert_eq!(group, "g");
                assert_eq!(rpc.data, [0, 255, 1, 2]);
                assert_eq!((rpc.offset, rpc.done), (9, true));
                assert_eq!(rpc.vote, openraft::Vote::new(3, 7));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn encoded_requests_read_back_and_answers_decode() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&encode_request(&Request::Ping).unwrap())
            .await
            .unwrap();
        assert!(matches!(read_request(&mut b).await.unwrap(), Request::Ping));
        let mut frame = vec![0; 4];
        serde_json::to_writer(&mut frame, &Response::Pong).unwrap();
        set_length(&mut frame).unwrap();
        let head: [u8; 4] = frame[..4].try_into().unwrap();
        assert_eq!(body_length(head).unwrap(), frame.len() - 4);
        let back: Response = decode_body(&frame[4..]).unwrap();
        assert!(matches!(back, Response::Pong));
        assert!(body_length(u32::MAX.to_be_bytes()).is_err());
    }

    #[tokio::test]
    async fn a_batch_of_heartbeats_reads_back_in_order() {
        let beat = |term| AppendEntriesRequest::<QueueTypeConfig> {
            vote: openraft::Vote::new_committed(term, 7),
            prev_log_id: None,
            leader_commit: None,
            entries: Vec::new(),
        };
        let request = Request::QueueHeartbeats {
            within_ms: 90,
            beats: vec![("a".into(), beat(3)), ("b".into(), beat(4))],
        };
        let (mut w, mut r) = tokio::io::duplex(4096);
        w.write_all(&encode_request(&request).unwrap())
            .await
            .unwrap();
        match read_request(&mut r).await.unwrap() {
            Request::QueueHeartbeats { within_ms, beats } => {
                assert_eq!(within_ms, 90);
                let got: Vec<_> = beats
                    .iter()
                    .map(|(g, rpc)| (g.as_str(), rpc.vote))
                    .collect();
                assert_eq!(
                    got,
                    [
                        ("a", openraft::Vote::new_committed(3, 7)),
                        ("b", openraft::Vote::new_committed(4, 7))
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
