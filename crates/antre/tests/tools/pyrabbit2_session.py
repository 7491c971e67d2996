"""Drives antre's management API with pyrabbit2, as a RabbitMQ user would.

Run by crates/antre/tests/rabbitmq_tools.rs with the broker's HTTP address
(host:port) and the name of an open AMQP connection, which it closes. Each step asserts what RabbitMQ would
answer; the script prints "pyrabbit2: ok" at the end, and any failure
raises with pyrabbit2's own error (status, reason, path, body).
"""

import sys

from pyrabbit2.api import Client

api = Client(sys.argv[1], "guest", "guest", timeout=10)

assert api.is_alive(), "aliveness test"
assert api.get_whoami()["name"] == "guest"
overview = api.get_overview()
assert overview["product_name"] == "antre", overview
assert [n["name"] for n in api.get_nodes()], "nodes"
assert "/" in api.get_vhost_names()
assert api.get_cluster_name()["name"], "cluster name"
assert api.get_extensions() == [], "extensions"

# create_exchange and create_binding send "arguments": [], which failed.
assert api.create_exchange("/", "py.events", "topic", durable=True)
assert any(x["name"] == "py.events" for x in api.get_exchanges("/"))
assert api.get_exchange("/", "py.events")["type"] == "topic"
api.create_queue("/", "py.audit", durable=True, arguments={"x-max-length": 100})
api.create_queue("/", "py.other", durable=False)
assert api.get_queue("/", "py.audit")["arguments"] == {"x-max-length": 100}
api.create_binding("/", "py.events", "py.audit", "order.*")
bindings = api.get_queue_bindings("/", "py.audit")
assert any(b["source"] == "py.events" and b["routing_key"] == "order.*" for b in bindings), bindings
assert any(b["source"] == "py.events" for b in api.get_bindings())

# get_queues with a pattern pages through RabbitMQ's paged answer.
found = api.get_queues("/", pattern="^py\\.a", regex=True)
assert [q["name"] for q in found] == ["py.audit"], found
found = api.get_queues(pattern="py.")
assert sorted(q["name"] for q in found) == ["py.audit", "py.other"], found

for n in range(3):
    assert api.publish("/", "py.events", "order.created", "order %d" % n,
                       properties={"delivery_mode": 2, "content_type": "text/plain"})
assert not api.publish("/", "py.events", "nothing.here", "lost")
assert api.get_queue_depth("/", "py.audit") == 3

got = api.get_messages("/", "py.audit", count=1, requeue=True)
assert got[0]["payload"] == "order 0" and got[0]["redelivered"] is False, got
got = api.get_messages("/", "py.audit", count=2, requeue=False)
assert [m["payload"] for m in got] == ["order 0", "order 1"], got
assert got[0]["redelivered"] is True, "requeued by the first get"
assert got[0]["properties"]["content_type"] == "text/plain"
assert api.get_queue_depth("/", "py.audit") == 1

api.purge_queue("/", "py.audit")
assert api.get_queue_depth("/", "py.audit") == 0

definitions = api.get_definitions()
assert any(q["name"] == "py.audit" for q in definitions["queues"]), definitions

api.delete_binding("/", "py.events", "py.audit", "order.*")
assert not any(b["source"] == "py.events" for b in api.get_queue_bindings("/", "py.audit"))
api.delete_queue("/", "py.audit")
api.delete_queue("/", "py.other")
assert api.delete_exchange("/", "py.events")
assert not any(q["name"].startswith("py.") for q in api.get_queues())
connection = sys.argv[2]
assert connection in [c["name"] for c in api.get_connections()]
assert api.get_connection(connection)["user"] == "guest"
channel = api.get_channels()[0]["name"]
assert api.get_channel(channel)["connection_details"]["name"] == connection
assert api.delete_connection(connection)

print("pyrabbit2: ok")
