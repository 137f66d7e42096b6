// Readiness probe for the local test broker or cluster: asks for cluster
// metadata (a real Metadata request through the admin client) until it answers
// with at least the expected number of brokers (third argument, default 1) or
// the deadline passes. Exit 0 when ready, 1 on timeout.
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterOptions;

public class WaitReady {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[1]));
        int expected = args.length > 2 ? Integer.parseInt(args[2]) : 1;
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "2000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "2000");
        props.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "200");
        try (Admin admin = Admin.create(props)) {
            String last = "no answer";
            while (System.nanoTime() < deadline) {
                try {
                    var cluster = admin.describeCluster(new DescribeClusterOptions().timeoutMs(2000));
                    int nodes = cluster.nodes().get(3, TimeUnit.SECONDS).size();
                    String controller = String.valueOf(cluster.controller().get(3, TimeUnit.SECONDS));
                    if (nodes >= expected) {
                        System.out.println("broker ready at " + bootstrap + " (nodes=" + nodes + ", controller=" + controller + ")");
                        return;
                    }
                    last = nodes + " of " + expected + " brokers";
                    Thread.sleep(200);
                } catch (Exception e) {
                    last = e.toString();
                }
            }
            System.err.println("broker at " + bootstrap + " not ready: " + last);
            System.exit(1);
        }
    }
}
