// java.net.http.HttpClient for tracer's end-to-end tests: N GETs, printing the statuses.
// usage: java Client.java PORT N
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.util.ArrayList;
import java.util.List;

public class Client {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build();
        List<String> statuses = new ArrayList<>();
        for (int i = 0; i < Integer.parseInt(args[1]); i++) {
            HttpRequest req = HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + args[0] + "/java/" + i)).build();
            statuses.add(String.valueOf(client.send(req, HttpResponse.BodyHandlers.ofString()).statusCode()));
        }
        System.out.println(String.join(" ", statuses));
    }
}
