// Validates Prometheus Operator objects (JSON array on stdin) against the CRDs' schemas as
// @kubernetes-models/prometheus-operator compiles them: one line per object, "ok KIND NAME"
// or "invalid KIND NAME: why"; exits 1 if any is invalid or of a kind it does not know.
import { PodMonitor, PrometheusRule, ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const kinds = { PodMonitor, PrometheusRule, ServiceMonitor };
let input = "";
for await (const chunk of process.stdin) input += chunk;
let failed = false;
for (const object of JSON.parse(input)) {
  const name = `${object.kind} ${object.metadata?.name}`;
  const Kind = kinds[object.kind];
  if (!Kind || object.apiVersion !== "monitoring.coreos.com/v1") {
    console.log(`invalid ${name}: not a monitoring.coreos.com/v1 kind this check knows`);
    failed = true;
    continue;
  }
  try {
    new Kind(object).validate();
    console.log(`ok ${name}`);
  } catch (error) {
    console.log(`invalid ${name}: ${error.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
