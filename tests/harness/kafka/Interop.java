// A plain Kafka client (kafka-clients, from the broker's own jars) for the interop tests of
// every language: it reads what polybus wrote and writes what polybus must read, knowing
// nothing of polybus. Run through tests/harness/kafka/interop.sh:
//
//   interop.sh create  <bootstrap> <topic> <partitions>
//   interop.sh produce <bootstrap> <topic> <key> <value-hex> [header=value ...]
//   interop.sh consume <bootstrap> <topic> <count> <timeout-ms>
//
// `consume` reads the topic from its start (all partitions assigned, no group) and prints one
// JSON object per record on stdout:
//   {"key": "..." | null, "value_hex": "...", "headers": {"name": "value"}, "partition": n, "offset": n}
// and exits 0 after <count> records, or 1 when the timeout passes first. `produce` writes one
// record (acks=all) and exits once it is acknowledged; it creates the topic when missing.

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HexFormat;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ExecutionException;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class Interop {
    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            usage();
        }
        String bootstrap = args[1], topic = args[2];
        switch (args[0]) {
            case "create" -> create(bootstrap, topic, args.length > 3 ? Integer.parseInt(args[3]) : 1);
            case "produce" -> {
                if (args.length < 5) usage();
                create(bootstrap, topic, 1);
                List<String> headers = new ArrayList<>();
                for (int i = 5; i < args.length; i++) headers.add(args[i]);
                produce(bootstrap, topic, args[3], args[4], headers);
            }
            case "consume" -> {
                if (args.length < 5) usage();
                System.exit(consume(bootstrap, topic, Integer.parseInt(args[3]), Long.parseLong(args[4])));
            }
            default -> usage();
        }
    }

    static void usage() {
        System.err.println("usage: Interop create|produce|consume <bootstrap> <topic> ...");
        System.exit(2);
    }

    static Properties props(String bootstrap) {
        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("client.id", "polybus-interop");
        return p;
    }

    static void create(String bootstrap, String topic, int partitions) throws Exception {
        try (Admin admin = Admin.create(props(bootstrap))) {
            admin.createTopics(List.of(new NewTopic(topic, partitions, (short) 1))).all().get();
        } catch (ExecutionException e) {
            if (!(e.getCause() instanceof TopicExistsException)) throw e;
        }
    }

    static void produce(String bootstrap, String topic, String key, String valueHex, List<String> headers)
            throws Exception {
        Properties p = props(bootstrap);
        p.put("acks", "all");
        p.put("key.serializer", ByteArraySerializer.class.getName());
        p.put("value.serializer", ByteArraySerializer.class.getName());
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p)) {
            ProducerRecord<byte[], byte[]> r = new ProducerRecord<>(topic,
                    key.isEmpty() ? null : key.getBytes(StandardCharsets.UTF_8),
                    HexFormat.of().parseHex(valueHex));
            for (String h : headers) {
                int eq = h.indexOf('=');
                if (eq <= 0) throw new IllegalArgumentException("header " + h + ": expected name=value");
                r.headers().add(h.substring(0, eq), h.substring(eq + 1).getBytes(StandardCharsets.UTF_8));
            }
            producer.send(r).get();
        }
    }

    static int consume(String bootstrap, String topic, int count, long timeoutMs) {
        Properties p = props(bootstrap);
        p.put("key.deserializer", ByteArrayDeserializer.class.getName());
        p.put("value.deserializer", ByteArrayDeserializer.class.getName());
        p.put("enable.auto.commit", "false");
        long deadline = System.currentTimeMillis() + timeoutMs;
        try (KafkaConsumer<byte[], byte[]> c = new KafkaConsumer<>(p)) {
            List<TopicPartition> parts = new ArrayList<>();
            while (parts.isEmpty()) {
                c.partitionsFor(topic).forEach(i -> parts.add(new TopicPartition(topic, i.partition())));
                if (parts.isEmpty() && System.currentTimeMillis() > deadline) {
                    System.err.println("topic " + topic + " has no partitions");
                    return 1;
                }
            }
            c.assign(parts);
            c.seekToBeginning(parts);
            int seen = 0;
            while (seen < count) {
                long left = deadline - System.currentTimeMillis();
                if (left <= 0) {
                    System.err.println("timed out after " + seen + " of " + count + " records");
                    return 1;
                }
                for (ConsumerRecord<byte[], byte[]> r : c.poll(Duration.ofMillis(Math.min(left, 200)))) {
                    System.out.println(json(r));
                    if (++seen == count) break;
                }
            }
            System.out.flush();
            return 0;
        }
    }

    static String json(ConsumerRecord<byte[], byte[]> r) {
        StringBuilder b = new StringBuilder("{\"key\": ");
        b.append(r.key() == null ? "null" : quote(new String(r.key(), StandardCharsets.UTF_8)));
        b.append(", \"value_hex\": ").append(quote(r.value() == null ? "" : HexFormat.of().formatHex(r.value())));
        b.append(", \"headers\": {");
        boolean first = true;
        for (Header h : r.headers()) {
            if (!first) b.append(", ");
            first = false;
            b.append(quote(h.key())).append(": ")
             .append(quote(h.value() == null ? "" : new String(h.value(), StandardCharsets.UTF_8)));
        }
        b.append("}, \"partition\": ").append(r.partition()).append(", \"offset\": ").append(r.offset()).append('}');
        return b.toString();
    }

    static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char ch : s.toCharArray()) {
            switch (ch) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                case '\n' -> b.append("\\n");
                case '\r' -> b.append("\\r");
                case '\t' -> b.append("\\t");
                default -> {
                    if (ch < 0x20) b.append(String.format("\\u%04x", (int) ch));
                    else b.append(ch);
                }
            }
        }
        return b.append('"').toString();
    }
}
