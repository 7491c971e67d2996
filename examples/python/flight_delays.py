#!/usr/bin/env python3
"""Flight-delay notices with pika: the same scenario as `--bin flight-delays`.

Operations control publishes each notice once to the fanout exchange
`flight.delays`; ground crew, baggage, cabin crew, pilots and airport
operations each bind their own queue and each get every notice.

    pip install pika
    python3 examples/python/flight_delays.py [--url amqp://guest:guest@127.0.0.1:5672/%2f]

Exits 0 when every team got every notice once, in order; 1 otherwise.
"""

import argparse
import json
import os
import sys
import time

import pika

EXCHANGE = "flight.delays"
TEAMS = ["ground-crew", "baggage", "cabin-crew", "pilots", "airport-ops"]


def notice(nid, flight, route, gate, scheduled, delay, reason, bags):
    return {"notice": nid, "flight": flight, "from": route[0], "to": route[1], "gate": gate,
            "scheduled": scheduled, "delay_minutes": delay, "reason": reason, "checked_bags": bags}


NOTICES = [
    notice("N-01", "GA-404", ("CGK", "DPS"), "C3", 14 * 60 + 50, 45, "thunderstorm over Jakarta", 142),
    notice("N-02", "QG-118", ("CGK", "SUB"), "A7", 15 * 60 + 10, 20, "late inbound aircraft", 96),
    notice("N-03", "ID-6271", ("CGK", "KNO"), "B2", 16 * 60, 90, "technical check (hydraulics)", 158),
    notice("N-04", "GA-404", ("CGK", "DPS"), "C5", 14 * 60 + 50, 70, "thunderstorm; gate changed", 142),
]


def hhmm(minutes):
    return f"{minutes // 60 % 24:02}:{minutes % 60:02}"


def react(team, n):
    """The same message, five readings."""
    f, dep = n["flight"], n["scheduled"] + n["delay_minutes"]
    return {
        "ground-crew": f"{f}: move pushback and tug to {hhmm(dep)} at gate {n['gate']}",
        "baggage": f"{f}: hold {n['checked_bags']} bags at the make-up belt until {hhmm(dep - 30)}",
        "cabin-crew": f"{f}: boarding moves to {hhmm(dep - 40)}, crew briefing at {hhmm(dep - 70)}",
        "pilots": f"{f}: new off-block {hhmm(dep)}, refile the {n['from']}→{n['to']} flight plan ({n['reason']})",
        "airport-ops": f"{f}: gate {n['gate']} busy until {hhmm(dep + 20)}, "
                       f"update the departure boards (+{n['delay_minutes']} min)",
    }[team]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
    params = pika.URLParameters(ap.parse_args().url)

    # One connection for the example's sake; each team would be its own
    # service with its own connection.
    conn = pika.BlockingConnection(params)
    control = conn.channel()
    control.exchange_delete(EXCHANGE)
    control.exchange_declare(EXCHANGE, "fanout")
    control.confirm_delivery()

    received = {team: [] for team in TEAMS}
    for team in TEAMS:
        ch = conn.channel()
        queue = f"{EXCHANGE}.{team}"
        ch.queue_declare(queue, exclusive=True)  # lives as long as the connection
        ch.queue_bind(queue, EXCHANGE, "")  # fanout ignores the routing key
        print(f"  {team:<12} subscribed: queue `{queue}` bound to `{EXCHANGE}`")

        def on_notice(ch, method, props, body, team=team):
            n = json.loads(body)
            print(f"  {team:<12} {react(team, n)}")
            received[team].append(n["notice"])
            ch.basic_ack(method.delivery_tag)

        ch.basic_consume(queue, on_notice, consumer_tag=team)
    print()

    for n in NOTICES:
        dep = n["scheduled"] + n["delay_minutes"]
        print(f"ops-control: {n['notice']} {n['flight']} {n['from']}→{n['to']} delayed "
              f"{n['delay_minutes']} min, departs {hhmm(dep)} ({n['reason']})")
        # Confirmed and mandatory: raises if the broker refuses it or no
        # queue is bound.
        control.basic_publish(EXCHANGE, "", json.dumps(n).encode(), mandatory=True,
                              properties=pika.BasicProperties(message_id=n["notice"],
                                                              content_type="application/json"))
        conn.process_data_events(time_limit=0.05)

    expected = [n["notice"] for n in NOTICES]
    deadline = time.time() + 15
    while time.time() < deadline and any(len(r) < len(expected) for r in received.values()):
        conn.process_data_events(time_limit=0.05)
    conn.process_data_events(time_limit=0.2)  # any extra copy would show up now

    print("\nChecking the outcome:")
    failed = [team for team in TEAMS if received[team] != expected]
    for team in TEAMS:
        ok = team not in failed
        print(f"  [{'ok' if ok else 'FAIL'}] {team} got every notice once, in order"
              + ("" if ok else f": got {received[team]}"))
    control.exchange_delete(EXCHANGE)
    conn.close()
    if failed:
        print(f"\nFAILED: {len(failed)} check(s) failed")
        return 1
    print("\nAll checks passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
