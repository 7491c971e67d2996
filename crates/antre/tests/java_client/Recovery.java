// RabbitMQ's Java client's automatic recovery through a broker crash: a
// consumer holds a persistent payment unacked when antre is killed -9
// and restarted on the same port; the client reconnects by itself,
// recovers its topology (a durable queue, a server-named exclusive queue
// bound to a fanout, their consumers), the payment comes again marked
// redelivered, and new publishes reach both consumers. Run by
// crates/antre/tests/java_client.rs with the broker's URL: prints "ready"
// once it holds the payment, waits for a line on stdin (the broker was
// restarted), prints "ok" and exits 0 on success.

import com.rabbitmq.client.*;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.*;

public class Recovery {
    record Got(String body, boolean redelivered, long tag) {}

    static void check(boolean condition, String what) {
        if (!condition) {
            throw new AssertionError(what);
        }
    }

    static Got next(BlockingQueue<Got> queue, String what) throws InterruptedException {
        Got got = queue.poll(30, TimeUnit.SECONDS);
        check(got != null, "no delivery: " + what);
        return got;
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
        factory.setAutomaticRecoveryEnabled(true);
        factory.setTopologyRecoveryEnabled(true);
        factory.setNetworkRecoveryInterval(200);
        factory.setRequestedHeartbeat(5);
        Connection conn = factory.newConnection("antre-java-recovery");
        CountDownLatch recovered = new CountDownLatch(1);
        ((Recoverable) conn).addRecoveryListener(new RecoveryListener() {
            @Override
            public void handleRecovery(Recoverable r) {
                recovered.countDown();
            }

            @Override
            public void handleRecoveryStarted(Recoverable r) {
            }
        });
        Channel ch = conn.createChannel();
        ch.confirmSelect();
        ch.basicQos(10);
        ch.queueDeclare("java.recovering", true, false, false, null);
        String notices = ch.queueDeclare().getQueue();
        ch.queueBind(notices, "amq.fanout", "");

        BlockingQueue<Got> payments = new LinkedBlockingQueue<>();
        ch.basicConsume("java.recovering", false, new DefaultConsumer(ch) {
            @Override
            public void handleDelivery(String tag, Envelope envelope, AMQP.BasicProperties props,
                                       byte[] body) {
                payments.add(new Got(new String(body, StandardCharsets.UTF_8),
                                     envelope.isRedeliver(), envelope.getDeliveryTag()));
            }
        });
        BlockingQueue<String> broadcast = new LinkedBlockingQueue<>();
        ch.basicConsume(notices, true, new DefaultConsumer(ch) {
            @Override
            public void handleDelivery(String tag, Envelope envelope, AMQP.BasicProperties props,
                                       byte[] body) {
                broadcast.add(new String(body, StandardCharsets.UTF_8));
            }
        });

        ch.basicPublish("", "java.recovering", MessageProperties.PERSISTENT_TEXT_PLAIN,
                        "payment-1".getBytes(StandardCharsets.UTF_8));
        ch.waitForConfirmsOrDie(10_000);
        Got held = next(payments, "payment-1");
        check(held.body().equals("payment-1") && !held.redelivered(), "the first delivery");
        // Held unacked through the crash.
        System.out.println("ready");
        System.out.flush();
        new BufferedReader(new InputStreamReader(System.in)).readLine();

        check(recovered.await(60, TimeUnit.SECONDS), "the connection recovered");
        Got again = next(payments, "payment-1 again");
        check(again.body().equals("payment-1") && again.redelivered(),
              "payment-1 redelivered, got " + again);
        ch.basicAck(again.tag(), false);

        ch.basicPublish("", "java.recovering", MessageProperties.PERSISTENT_TEXT_PLAIN,
                        "payment-2".getBytes(StandardCharsets.UTF_8));
        ch.basicPublish("amq.fanout", "", null, "notice".getBytes(StandardCharsets.UTF_8));
        ch.waitForConfirmsOrDie(10_000);
        Got second = next(payments, "payment-2");
        check(second.body().equals("payment-2") && !second.redelivered(), "payment-2");
        ch.basicAck(second.tag(), false);
        String notice = broadcast.poll(30, TimeUnit.SECONDS);
        check("notice".equals(notice), "the recovered exclusive queue's notice, got " + notice);
        conn.close();
        System.out.println("ok");
    }
}
