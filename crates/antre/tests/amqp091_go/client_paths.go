// Drives antre with amqp091-go (RabbitMQ's Go client, Debian's
// golang-github-rabbitmq-amqp091-go-dev) the way its users do: publisher
// confirms (PublishWithDeferredConfirm, Wait), a prefetch, durable and
// quorum queues, a consumer that acks, a nack that requeues (redelivered
// after), pub/sub over fanout and topic exchanges with server-named
// queues, a mandatory publish returned on NotifyReturn, RPC over direct
// reply-to, a passive declare of a missing queue that closes its own
// channel only (404 on NotifyClose), and QueueDelete with ifUnused and
// ifEmpty. Run by crates/antre/tests/amqp091_go.rs with the broker's URL
// as the only argument; prints "ok" and exits 0 on success.
package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func check(ok bool, format string, args ...interface{}) {
	if !ok {
		fmt.Fprintf(os.Stderr, "failed: "+format+"\n", args...)
		os.Exit(1)
	}
}

func must(err error, what string) {
	check(err == nil, "%s: %v", what, err)
}

func publish(ch *amqp.Channel, exchange, key string, mandatory bool, msg amqp.Publishing) {
	confirm, err := ch.PublishWithDeferredConfirm(exchange, key, mandatory, false, msg)
	must(err, "publish")
	check(confirm.Wait(), "publish to %q %q acked", exchange, key)
}

func getOne(ch *amqp.Channel, queue string, autoAck bool) amqp.Delivery {
	for i := 0; i < 500; i++ {
		d, ok, err := ch.Get(queue, autoAck)
		must(err, "get")
		if ok {
			return d
		}
		time.Sleep(10 * time.Millisecond)
	}
	check(false, "nothing in %s", queue)
	return amqp.Delivery{}
}

func main() {
	conn, err := amqp.Dial(os.Args[1])
	must(err, "dial")
	defer conn.Close()
	ch, err := conn.Channel()
	must(err, "channel")
	must(ch.Confirm(false), "confirm.select")
	must(ch.Qos(10, 0, false), "qos")

	// Point to point: confirmed persistent payments, consumed once each.
	_, err = ch.QueueDeclare("go.payments", true, false, false, false, nil)
	must(err, "declare go.payments")
	for n := 0; n < 20; n++ {
		publish(ch, "", "go.payments", false, amqp.Publishing{
			DeliveryMode: amqp.Persistent, MessageId: fmt.Sprint(n), Body: []byte(fmt.Sprintf("payment-%d", n)),
		})
	}
	deliveries, err := ch.Consume("go.payments", "go-consumer", false, false, false, false, nil)
	must(err, "consume")
	for n := 0; n < 20; n++ {
		select {
		case d := <-deliveries:
			check(string(d.Body) == fmt.Sprintf("payment-%d", n), "payment-%d in order, got %s", n, d.Body)
			check(!d.Redelivered && d.DeliveryMode == amqp.Persistent, "a first, persistent delivery")
			must(d.Ack(false), "ack")
		case <-time.After(10 * time.Second):
			check(false, "payment-%d not delivered", n)
		}
	}
	must(ch.Cancel("go-consumer", false), "cancel")

	// A nack with requeue comes back, marked redelivered.
	publish(ch, "", "go.payments", false, amqp.Publishing{Body: []byte("retry")})
	first := getOne(ch, "go.payments", false)
	check(!first.Redelivered, "first get not redelivered")
	must(first.Nack(false, true), "nack")
	again := getOne(ch, "go.payments", false)
	check(string(again.Body) == "retry" && again.Redelivered, "the requeued message redelivered")
	must(again.Ack(false), "ack")

	// A quorum queue.
	_, err = ch.QueueDeclare("go.quorum", true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
	must(err, "declare go.quorum")
	publish(ch, "", "go.quorum", false, amqp.Publishing{DeliveryMode: amqp.Persistent, Body: []byte("q")})
	check(string(getOne(ch, "go.quorum", true).Body) == "q", "the quorum queue's message")

	// Pub/sub: every subscriber of a fanout gets the delay notice.
	must(ch.ExchangeDeclare("go.delays", "fanout", false, false, false, false, nil), "fanout")
	var crews []string
	for i := 0; i < 3; i++ {
		q, err := ch.QueueDeclare("", false, true, true, false, nil)
		must(err, "server-named queue")
		check(strings.HasPrefix(q.Name, "amq.gen-"), "a server-named queue: %s", q.Name)
		must(ch.QueueBind(q.Name, "", "go.delays", false, nil), "bind")
		crews = append(crews, q.Name)
	}
	publish(ch, "go.delays", "", false, amqp.Publishing{Body: []byte("GA-123 delayed")})
	for _, q := range crews {
		check(string(getOne(ch, q, true).Body) == "GA-123 delayed", "%s got the notice", q)
	}
	// A topic exchange routes by pattern.
	must(ch.ExchangeDeclare("go.orders", "topic", false, false, false, false, nil), "topic")
	email, err := ch.QueueDeclare("", false, true, true, false, nil)
	must(err, "email queue")
	must(ch.QueueBind(email.Name, "order.*", "go.orders", false, nil), "bind")
	publish(ch, "go.orders", "order.changed", false, amqp.Publishing{Body: []byte("changed")})
	publish(ch, "go.orders", "user.changed", false, amqp.Publishing{Body: []byte("user")})
	check(string(getOne(ch, email.Name, true).Body) == "changed", "order.changed")
	_, ok, err := ch.Get(email.Name, true)
	must(err, "get")
	check(!ok, "user.changed not routed")

	// A mandatory publish no queue takes comes back, then is confirmed.
	returns := ch.NotifyReturn(make(chan amqp.Return, 1))
	publish(ch, "", "go.nowhere", true, amqp.Publishing{Body: []byte("lost")})
	select {
	case r := <-returns:
		check(r.ReplyCode == 312 && string(r.Body) == "lost", "returned with 312: %v", r.ReplyCode)
	case <-time.After(10 * time.Second):
		check(false, "no basic.return")
	}

	// RPC over direct reply-to.
	server, err := conn.Channel()
	must(err, "server channel")
	_, err = server.QueueDeclare("go.rpc", false, true, true, false, nil)
	must(err, "declare go.rpc")
	client, err := conn.Channel()
	must(err, "client channel")
	replies, err := client.Consume("amq.rabbitmq.reply-to", "", true, false, false, false, nil)
	must(err, "consume replies")
	must(client.Publish("", "go.rpc", false, false, amqp.Publishing{
		ReplyTo: "amq.rabbitmq.reply-to", CorrelationId: "c1", Body: []byte("ping"),
	}), "request")
	request := getOne(server, "go.rpc", true)
	must(server.Publish("", request.ReplyTo, false, false, amqp.Publishing{
		CorrelationId: request.CorrelationId, Body: []byte("pong"),
	}), "reply")
	select {
	case answer := <-replies:
		check(string(answer.Body) == "pong" && answer.CorrelationId == "c1", "the RPC answer")
	case <-time.After(10 * time.Second):
		check(false, "no RPC answer")
	}

	// A passive declare of a missing queue closes its own channel only.
	other, err := conn.Channel()
	must(err, "other channel")
	closed := other.NotifyClose(make(chan *amqp.Error, 1))
	_, err = other.QueueDeclarePassive("go.missing", false, false, false, false, nil)
	amqpErr, isAmqp := err.(*amqp.Error)
	check(isAmqp && amqpErr.Code == 404, "404 for a missing queue, got %v", err)
	select {
	case e := <-closed:
		check(e != nil && e.Code == 404, "the channel closed with 404: %v", e)
	case <-time.After(10 * time.Second):
		check(false, "the channel did not report its close")
	}
	check(!conn.IsClosed(), "the connection stays open")
	publish(ch, "", "go.payments", false, amqp.Publishing{Body: []byte("still")})
	check(string(getOne(ch, "go.payments", true).Body) == "still", "still served")

	// QueueDelete with both flags, once it is empty and unused.
	n, err := ch.QueueDelete("go.payments", true, true, false)
	must(err, "delete go.payments")
	check(n == 0, "deleted empty, %d left", n)
	_, err = ch.QueueDelete("go.quorum", false, false, false)
	must(err, "delete go.quorum")
	must(conn.Close(), "close")
	fmt.Println("ok")
}
