"""A Celery worker and its clients against antre, as a Celery deployment
runs them: tasks sent and their results returned over the rpc:// result
backend, late acks with a prefetch, a task retried with a countdown (an
ETA task the worker holds while its prefetch grows), a group, and the
worker's remote control over its pidbox broadcast exchange (the ping the
worker fixture waits for, inspect, a rate-limit command). Run by
crates/antre/tests/celery.rs with the broker's URL as the only argument;
prints "ok" and exits 0 on success."""

import sys

from celery import Celery, group
from celery.contrib.testing.worker import start_worker

app = Celery("antre_test", broker=sys.argv[1], backend="rpc://")
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=4,
    task_default_queue="antre.tasks",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=60,
)
# The fixture's ping task.
app.loader.import_module("celery.contrib.testing.tasks")


@app.task
def add(x, y):
    return x + y


@app.task(bind=True, max_retries=3)
def flaky(self, fails):
    if self.request.retries < fails:
        raise self.retry(countdown=0.2)
    return self.request.retries


def main():
    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=True,
                      shutdown_timeout=30):
        results = [add.delay(n, n) for n in range(20)]
        assert [r.get(timeout=15) for r in results] == [2 * n for n in range(20)]
        assert flaky.delay(2).get(timeout=15) == 2
        assert group(add.s(n, 1) for n in range(5))().get(timeout=15) == [1, 2, 3, 4, 5]
        pongs = app.control.ping(timeout=10, limit=1)
        assert len(pongs) == 1, pongs
        registered = app.control.inspect(timeout=10, limit=1).registered()
        assert registered and any(
            "worker.add" in tasks or "add" in " ".join(tasks) for tasks in registered.values()
        ), registered
        replies = app.control.rate_limit(add.name, "100/m", reply=True, timeout=10, limit=1)
        assert replies and all("ok" in r for reply in replies for r in reply.values()), replies
    print("ok")


main()
