"""Drives antre with pika (the Python client) through the code paths that
differed from RabbitMQ: teardown after auto-delete, delete with if_unused and
if_empty, RPC over direct reply-to, exchange helpers, confirms with mandatory
returns, consumer priorities. Run by crates/antre/tests/pika.rs with the
broker's URL as the only argument; prints "ok" and exits 0 on success."""

import sys

import pika

params = pika.URLParameters(sys.argv[1])
conn = pika.BlockingConnection(params)
ch = conn.channel()

assert conn._impl.server_capabilities.get("consumer_priorities") is True
assert conn._impl.server_capabilities.get("direct_reply_to") is True

# Teardown after auto-delete: unbinding what auto-delete already removed.
ch.exchange_declare("pika.events", "topic", auto_delete=True)
q = ch.queue_declare("", auto_delete=True).method.queue
ch.queue_bind(q, "pika.events", "a.#")
tag = ch.basic_consume(q, lambda *a: None)
ch.basic_cancel(tag)  # the queue goes, and with it the exchange's last binding
ch.queue_unbind(q, "pika.events", "a.#")
ch.exchange_unbind("pika.dst", "pika.events", "a.#")

# Delete with both flags while the only message is unacked.
ch.queue_declare("pika.work")
ch.basic_publish("", "pika.work", b"job")
method, _, _ = ch.basic_get("pika.work")
assert method is not None
ch.queue_delete("pika.work", if_unused=True, if_empty=True)
try:
    ch.queue_declare("pika.work", passive=True)
    raise AssertionError("pika.work still exists")
except pika.exceptions.ChannelClosedByBroker as e:
    assert e.reply_code == 404, e
ch = conn.channel()

# RPC over direct reply-to.
server = conn.channel()
server.queue_declare("pika.rpc", exclusive=True)
replies = []
ch.basic_consume("amq.rabbitmq.reply-to", lambda c, m, p, b: replies.append(b), auto_ack=True)
ch.basic_publish("", "pika.rpc", b"ping", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"))
while True:
    method, props, body = server.basic_get("pika.rpc", auto_ack=True)
    if method is not None:
        break
    conn.process_data_events(time_limit=0.05)
server.basic_publish("", props.reply_to, b"pong")
while not replies:
    conn.process_data_events(time_limit=0.05)
assert replies == [b"pong"], replies

# Exchange helpers: the default exchange cannot be declared.
try:
    ch.exchange_declare("", passive=True)
    raise AssertionError("declaring the default exchange succeeded")
except pika.exceptions.ChannelClosedByBroker as e:
    assert e.reply_code == 403, e
ch = conn.channel()

# Confirms with a mandatory return.
ch.confirm_delivery()
try:
    ch.basic_publish("amq.direct", "nowhere", b"x", mandatory=True)
    raise AssertionError("an unroutable mandatory message was accepted")
except pika.exceptions.UnroutableError:
    pass

conn.close()
print("ok")
