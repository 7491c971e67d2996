// Drives antre with amqplib (Node.js) the way its users do: a confirm
// channel with a prefetch, durable and quorum queues, persistent
// publishes waited for with waitForConfirms, a consumer that acks, a nack
// that requeues (redelivered after), pub/sub over fanout and topic
// exchanges, a mandatory publish returned ('return' event), RPC over
// direct reply-to, a checkQueue of a missing queue that closes its own
// channel only (404), and deleteQueue with ifUnused/ifEmpty. Run by
// crates/antre/tests/amqplib.rs with the broker's URL as the only
// argument; prints "ok" and exits 0 on success.

"use strict";
const assert = require("node:assert/strict");
const amqp = require("amqplib");

function nextMessage(ch, queue, options = {}) {
  return new Promise((resolve, reject) => {
    ch.consume(queue, (msg) => {
      ch.cancel(msg.fields.consumerTag).then(() => resolve(msg), reject);
    }, options).catch(reject);
  });
}

async function getOne(ch, queue, options = {}) {
  for (let i = 0; i < 500; i++) {
    const msg = await ch.get(queue, options);
    if (msg) return msg;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`nothing in ${queue}`);
}

async function main(url) {
  const conn = await amqp.connect(url);
  const ch = await conn.createConfirmChannel();
  await ch.prefetch(10);

  // Point to point: confirmed persistent payments, consumed once each.
  await ch.assertQueue("amqplib.payments", { durable: true });
  for (let n = 0; n < 20; n++) {
    ch.sendToQueue("amqplib.payments", Buffer.from(`payment-${n}`), { persistent: true, messageId: `${n}` });
  }
  await ch.waitForConfirms();
  const got = [];
  await new Promise((resolve, reject) => {
    ch.consume("amqplib.payments", (msg) => {
      assert.equal(msg.fields.redelivered, false);
      assert.equal(msg.properties.deliveryMode, 2);
      got.push(msg.content.toString());
      ch.ack(msg);
      if (got.length === 20) {
        ch.cancel(msg.fields.consumerTag).then(resolve, reject);
      }
    }).catch(reject);
  });
  assert.deepEqual(got, Array.from({ length: 20 }, (_, n) => `payment-${n}`));

  // A nack with requeue comes back, marked redelivered.
  ch.sendToQueue("amqplib.payments", Buffer.from("retry"));
  await ch.waitForConfirms();
  const first = await getOne(ch, "amqplib.payments");
  assert.equal(first.fields.redelivered, false);
  ch.nack(first, false, true);
  const again = await getOne(ch, "amqplib.payments");
  assert.equal(again.content.toString(), "retry");
  assert.equal(again.fields.redelivered, true);
  ch.ack(again);

  // A quorum queue, consumed by a consumer of its own.
  await ch.assertQueue("amqplib.quorum", { durable: true, arguments: { "x-queue-type": "quorum" } });
  ch.sendToQueue("amqplib.quorum", Buffer.from("q"), { persistent: true });
  await ch.waitForConfirms();
  const q = await nextMessage(ch, "amqplib.quorum");
  assert.equal(q.content.toString(), "q");
  ch.ack(q);

  // Pub/sub: every subscriber of a fanout gets the delay notice.
  await ch.assertExchange("amqplib.delays", "fanout", { durable: false });
  const crews = [];
  for (let i = 0; i < 3; i++) {
    const { queue } = await ch.assertQueue("", { exclusive: true });
    await ch.bindQueue(queue, "amqplib.delays", "");
    crews.push(queue);
  }
  ch.publish("amqplib.delays", "", Buffer.from("GA-123 delayed"));
  await ch.waitForConfirms();
  for (const queue of crews) {
    const notice = await getOne(ch, queue, { noAck: true });
    assert.equal(notice.content.toString(), "GA-123 delayed");
  }
  // A topic exchange routes by pattern.
  await ch.assertExchange("amqplib.orders", "topic", { durable: false });
  const { queue: email } = await ch.assertQueue("", { exclusive: true });
  await ch.bindQueue(email, "amqplib.orders", "order.*");
  ch.publish("amqplib.orders", "order.changed", Buffer.from("changed"));
  ch.publish("amqplib.orders", "user.changed", Buffer.from("user"));
  await ch.waitForConfirms();
  assert.equal((await getOne(ch, email, { noAck: true })).content.toString(), "changed");
  assert.equal(await ch.get(email, { noAck: true }), false);

  // A mandatory publish no queue takes comes back, then is confirmed.
  const returned = new Promise((resolve) => ch.once("return", resolve));
  ch.publish("", "amqplib.nowhere", Buffer.from("lost"), { mandatory: true });
  assert.equal((await returned).content.toString(), "lost");
  await ch.waitForConfirms();

  // RPC over direct reply-to.
  const rpc = await conn.createChannel();
  await rpc.assertQueue("amqplib.rpc", { exclusive: true });
  const replies = await conn.createChannel();
  const reply = new Promise((resolve, reject) => {
    replies.consume("amq.rabbitmq.reply-to", resolve, { noAck: true }).catch(reject);
  });
  replies.sendToQueue("amqplib.rpc", Buffer.from("ping"), { replyTo: "amq.rabbitmq.reply-to", correlationId: "c1" });
  const request = await getOne(rpc, "amqplib.rpc", { noAck: true });
  rpc.sendToQueue(request.properties.replyTo, Buffer.from("pong"), { correlationId: request.properties.correlationId });
  const answer = await reply;
  assert.equal(answer.content.toString(), "pong");
  assert.equal(answer.properties.correlationId, "c1");

  // A checkQueue of a missing queue closes its own channel only (404).
  const other = await conn.createChannel();
  const closed = new Promise((resolve) => other.once("error", resolve));
  await assert.rejects(other.checkQueue("amqplib.missing"), /404/);
  assert.match(String((await closed).message), /NOT_FOUND/);
  ch.sendToQueue("amqplib.payments", Buffer.from("still"));
  await ch.waitForConfirms();
  assert.equal((await getOne(ch, "amqplib.payments", { noAck: true })).content.toString(), "still");

  // deleteQueue with both flags, once it is empty and unused.
  const deleted = await ch.deleteQueue("amqplib.payments", { ifUnused: true, ifEmpty: true });
  assert.equal(deleted.messageCount, 0);
  await ch.deleteQueue("amqplib.quorum");
  await conn.close();
  console.log("ok");
}

main(process.argv[2]).catch((e) => {
  console.error(e);
  process.exit(1);
});
