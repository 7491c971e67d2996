// Drives antre with RabbitMQ's Java client (amqp-client, Debian's
// librabbitmq-client-java) the way its users do: publisher confirms
// waited for with waitForConfirmsOrDie, a prefetch, durable and quorum
// queues, a DefaultConsumer that acks, a nack that requeues (redelivered
// after), pub/sub over fanout and topic exchanges with server-named
// queues, a mandatory publish returned to a ReturnListener, RpcClient and
// StringRpcServer (direct reply-to), a passive declare of a missing queue
// that closes its own channel only (404), and queueDelete with ifUnused
// and ifEmpty. Run by crates/antre/tests/java_client.rs as a single-file
// source program with the broker's URL as the only argument; prints "ok"
// and exits 0 on success.

import com.rabbitmq.client.*;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.*;
import java.util.concurrent.*;

public class ClientPaths {
    static void check(boolean condition, String what) {
        if (!condition) {
            throw new AssertionError(what);
        }
    }

    static String text(byte[] body) {
        return new String(body, StandardCharsets.UTF_8);
    }

    static byte[] bytes(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    static GetResponse getOne(Channel ch, String queue, boolean autoAck) throws Exception {
        for (int i = 0; i < 500; i++) {
            GetResponse r = ch.basicGet(queue, autoAck);
            if (r != null) {
                return r;
            }
            Thread.sleep(10);
        }
        throw new AssertionError("nothing in " + queue);
    }

    // The client's threads keep the JVM up after main throws: a failure
    // must exit, or the test would wait for its time limit.
    public static void main(String[] args) {
        try {
            run(args);
        } catch (Throwable e) {
            e.printStackTrace();
            System.exit(1);
        }
        System.exit(0);
    }

    static void run(String[] args) throws Exception {
        ConnectionFactory factory = new ConnectionFactory();
        factory.setUri(args[0]);
        Connection conn = factory.newConnection("antre-java-test");
        Channel ch = conn.createChannel();
        ch.confirmSelect();
        ch.basicQos(10);

        // Point to point: confirmed persistent payments, consumed once each.
        ch.queueDeclare("java.payments", true, false, false, null);
        for (int n = 0; n < 20; n++) {
            AMQP.BasicProperties props = MessageProperties.PERSISTENT_TEXT_PLAIN.builder()
                .messageId(Integer.toString(n)).build();
            ch.basicPublish("", "java.payments", props, bytes("payment-" + n));
        }
        ch.waitForConfirmsOrDie(10_000);
        BlockingQueue<String> got = new LinkedBlockingQueue<>();
        String tag = ch.basicConsume("java.payments", false, new DefaultConsumer(ch) {
            @Override
            public void handleDelivery(String consumerTag, Envelope envelope,
                                       AMQP.BasicProperties properties, byte[] body) throws IOException {
                check(!envelope.isRedeliver(), "a first delivery marked redelivered");
                check(properties.getDeliveryMode() == 2, "persistent");
                got.add(text(body));
                getChannel().basicAck(envelope.getDeliveryTag(), false);
            }
        });
        for (int n = 0; n < 20; n++) {
            String body = got.poll(10, TimeUnit.SECONDS);
            check(("payment-" + n).equals(body), "payment-" + n + " in order, got " + body);
        }
        ch.basicCancel(tag);

        // A nack with requeue comes back, marked redelivered.
        ch.basicPublish("", "java.payments", null, bytes("retry"));
        ch.waitForConfirmsOrDie(10_000);
        GetResponse first = getOne(ch, "java.payments", false);
        check(!first.getEnvelope().isRedeliver(), "first get not redelivered");
        ch.basicNack(first.getEnvelope().getDeliveryTag(), false, true);
        GetResponse again = getOne(ch, "java.payments", false);
        check(text(again.getBody()).equals("retry") && again.getEnvelope().isRedeliver(),
              "the requeued message redelivered");
        ch.basicAck(again.getEnvelope().getDeliveryTag(), false);

        // A quorum queue.
        ch.queueDeclare("java.quorum", true, false, false, Map.of("x-queue-type", "quorum"));
        ch.basicPublish("", "java.quorum", MessageProperties.PERSISTENT_BASIC, bytes("q"));
        ch.waitForConfirmsOrDie(10_000);
        GetResponse q = getOne(ch, "java.quorum", true);
        check(text(q.getBody()).equals("q"), "the quorum queue's message");

        // Pub/sub: every subscriber of a fanout gets the delay notice.
        ch.exchangeDeclare("java.delays", BuiltinExchangeType.FANOUT);
        List<String> crews = new ArrayList<>();
        for (int i = 0; i < 3; i++) {
            String queue = ch.queueDeclare().getQueue();
            check(queue.startsWith("amq.gen-"), "a server-named queue: " + queue);
            ch.queueBind(queue, "java.delays", "");
            crews.add(queue);
        }
        ch.basicPublish("java.delays", "", null, bytes("GA-123 delayed"));
        ch.waitForConfirmsOrDie(10_000);
        for (String queue : crews) {
            check(text(getOne(ch, queue, true).getBody()).equals("GA-123 delayed"), queue);
        }
        // A topic exchange routes by pattern.
        ch.exchangeDeclare("java.orders", BuiltinExchangeType.TOPIC);
        String email = ch.queueDeclare().getQueue();
        ch.queueBind(email, "java.orders", "order.*");
        ch.basicPublish("java.orders", "order.changed", null, bytes("changed"));
        ch.basicPublish("java.orders", "user.changed", null, bytes("user"));
        ch.waitForConfirmsOrDie(10_000);
        check(text(getOne(ch, email, true).getBody()).equals("changed"), "order.changed");
        check(ch.basicGet(email, true) == null, "user.changed not routed");

        // A mandatory publish no queue takes comes back, then is confirmed.
        CompletableFuture<Integer> returned = new CompletableFuture<>();
        ch.addReturnListener((replyCode, replyText, exchange, routingKey, properties, body) ->
            returned.complete(replyCode));
        ch.basicPublish("", "java.nowhere", true, null, bytes("lost"));
        check(returned.get(10, TimeUnit.SECONDS) == 312, "returned with 312 NO_ROUTE");
        ch.waitForConfirmsOrDie(10_000);

        // RPC: RpcClient (direct reply-to) against a StringRpcServer.
        Channel serverCh = conn.createChannel();
        serverCh.queueDeclare("java.rpc", false, true, false, null);
        StringRpcServer server = new StringRpcServer(serverCh, "java.rpc") {
            @Override
            public String handleStringCall(String request) {
                return request.equals("ping") ? "pong" : "?";
            }
        };
        Thread serving = new Thread(() -> {
            try {
                server.mainloop();
            } catch (Exception e) {
                // The server's channel closes at the end.
            }
        });
        serving.start();
        RpcClient client = new RpcClient(conn.createChannel(), "", "java.rpc",
                                         "amq.rabbitmq.reply-to", 10_000);
        check(client.stringCall("ping").equals("pong"), "the RPC answer");
        client.close();
        server.terminateMainloop();
        serving.join(10_000);

        // A passive declare of a missing queue closes its own channel only.
        Channel other = conn.createChannel();
        try {
            other.queueDeclarePassive("java.missing");
            throw new AssertionError("a missing queue was found");
        } catch (IOException e) {
            ShutdownSignalException why = (ShutdownSignalException) e.getCause();
            AMQP.Channel.Close close = (AMQP.Channel.Close) why.getReason();
            check(close.getReplyCode() == 404, "404, got " + close.getReplyCode());
        }
        check(!other.isOpen() && conn.isOpen() && ch.isOpen(), "only that channel closed");
        ch.basicPublish("", "java.payments", null, bytes("still"));
        ch.waitForConfirmsOrDie(10_000);
        check(text(getOne(ch, "java.payments", true).getBody()).equals("still"), "still served");

        // queueDelete with both flags, once it is empty and unused.
        check(ch.queueDelete("java.payments", true, true).getMessageCount() == 0, "deleted empty");
        ch.queueDelete("java.quorum");
        conn.close();
        System.out.println("ok");
    }
}
