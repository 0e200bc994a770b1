#!/usr/bin/env python3
"""Generates the Grafana dashboards (data source as a template variable):

    python3 dashboards/generate.py > dashboards/clusterdns.json                  # the DNS server
    python3 dashboards/generate.py webhook > dashboards/clusterdns-webhook.json  # the webhook

Edit the panel lists here and re-run. The webhook runs as its own Deployment with its own
--metrics address, so it has its own dashboard (its job exports no coredns_build_info to
select on). tests/metrics.rs and tests/webhook.rs check every metric a panel queries against
what a running server / webhook exports.
"""
import sys
import json

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", instance=~"$instance"'

panels = []
y = 0


def row(title):
    global y
    panels.append({"type": "row", "title": title, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "id": len(panels) + 1, "panels": []})
    y += 1


def ts(title, exprs, unit="short", w=12, x=0, h=8, stack=False):
    panels.append({
        "type": "timeseries", "title": title, "datasource": DS, "id": len(panels) + 1,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"stacking": {"mode": "normal" if stack else "none"}}}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "showLegend": True}, "tooltip": {"mode": "multi"}},
        "targets": [{"datasource": DS, "expr": e, "legendFormat": l, "refId": chr(65 + i)} for i, (e, l) in enumerate(exprs)],
    })


def stat(title, expr, unit="short", w=6, x=0, h=4):
    panels.append({
        "type": "stat", "title": title, "datasource": DS, "id": len(panels) + 1,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        "targets": [{"datasource": DS, "expr": expr, "refId": "A"}],
    })


def clusterdns():
    global y
    row("Requests")
    ts("Requests by type", [(f'sum by (type) (rate(coredns_dns_requests_total{{{SEL}}}[$__rate_interval]))', "{{type}}")], "reqps", stack=True)
    ts("Requests by zone", [(f'sum by (zone) (rate(coredns_dns_requests_total{{{SEL}}}[$__rate_interval]))', "{{zone}}")], "reqps", x=12)
    y += 8
    ts("Responses by rcode", [(f'sum by (rcode) (rate(coredns_dns_responses_total{{{SEL}}}[$__rate_interval]))', "{{rcode}}")], "reqps", stack=True)
    ts("Latency quantiles", [
        (f'histogram_quantile(0.50, sum by (le) (rate(coredns_dns_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))', "p50"),
        (f'histogram_quantile(0.99, sum by (le) (rate(coredns_dns_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))', "p99"),
        (f'histogram_quantile(0.999, sum by (le) (rate(coredns_dns_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))', "p99.9"),
    ], "s", x=12)
    y += 8
    ts("Requests by protocol and family", [(f'sum by (proto, family) (rate(coredns_dns_requests_total{{{SEL}}}[$__rate_interval]))', "{{proto}} family {{family}}")], "reqps")
    ts("Response size p99", [(f'histogram_quantile(0.99, sum by (le, proto) (rate(coredns_dns_response_size_bytes_bucket{{{SEL}}}[$__rate_interval])))', "{{proto}}")], "bytes", x=12)
    y += 8
    row("Cache")
    ts("Cache hit ratio", [(f'sum(rate(coredns_cache_hits_total{{{SEL}}}[$__rate_interval])) / sum(rate(coredns_cache_requests_total{{{SEL}}}[$__rate_interval]))', "hit ratio")], "percentunit")
    ts("Cache entries", [(f'sum by (type) (coredns_cache_entries{{{SEL}}})', "{{type}}")], x=12)
    y += 8
    row("Forwarding")
    ts("Forward latency p99 by upstream", [(f'histogram_quantile(0.99, sum by (le, to) (rate(coredns_proxy_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))', "{{to}}")], "s")
    ts("Upstream health-check failures", [(f'sum by (to) (rate(coredns_proxy_healthcheck_failures_total{{{SEL}}}[$__rate_interval]))', "{{to}}")], "ops", x=12)
    y += 8
    row("Cluster data")
    stat("API synced", f'min(clusterdns_source_synced{{{SEL}}})', w=6)
    stat("Data stale for", f'max(clusterdns_source_stale_seconds{{{SEL}}})', "s", w=6, x=6)
    stat("Placement mismatches", f'max(clusterdns_placement_mismatches{{{SEL}}})', w=6, x=12)
    stat("Objects", f'sum(clusterdns_objects{{{SEL}}})', w=6, x=18)
    y += 4
    ts("Endpoints by compute type", [(f'max by (compute) (clusterdns_endpoints{{{SEL}}})', "{{compute}}")])
    ts("DNS programming latency p99", [(f'histogram_quantile(0.99, sum by (le, service_kind) (rate(coredns_kubernetes_dns_programming_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))', "{{service_kind}}")], "s", x=12)
    y += 8
    row("Reachability (prober)")
    ts("Probe verdicts by path", [(f'sum by (path, verdict) (clusterdns_probe_paths{{{SEL}}})', "{{path}} {{verdict}}")])
    ts("Live probe latency by target", [(f'max by (target, protocol) (clusterdns_probe_latency_seconds{{{SEL}}})', "{{target}} {{protocol}}")], "s", x=12)
    y += 8
    stat("AWS data stale for", f'max(clusterdns_probe_aws_stale_seconds{{{SEL}}})', "s", w=6)
    y += 4
    row("Zone-aware answers")
    ts("Zone-aware answers by result", [(f'sum by (result) (rate(clusterdns_zonal_answers_total{{{SEL}}}[$__rate_interval]))', "{{result}}")], "reqps", stack=True)
    y += 8
    row("Under load and failure")
    ts("Upstream replies dropped by reason", [(f'sum by (to, reason) (rate(clusterdns_forward_dropped_replies_total{{{SEL}}}[$__rate_interval]))', "{{to}} {{reason}}")], "ops")
    ts("Forwarded queries in flight", [(f'sum by (instance) (clusterdns_forward_in_flight{{{SEL}}})', "{{instance}}")], x=12)
    y += 8
    ts("TCP connections open", [(f'sum by (instance) (clusterdns_tcp_connections{{{SEL}}})', "{{instance}}")])
    ts("TCP connections refused by reason", [(f'sum by (reason) (rate(clusterdns_tcp_refused_total{{{SEL}}}[$__rate_interval]))', "{{reason}}")], "ops", x=12)
    y += 8


def webhook():
    global y
    row("Admissions")
    ts("Admission reviews answered", [(f'sum by (instance) (rate(clusterdns_webhook_admission_duration_seconds_count{{{SEL}}}[$__rate_interval]))', "{{instance}}")], "reqps")
    ts("Admission latency quantiles", [
        (f'histogram_quantile(0.50, sum by (le) (rate(clusterdns_webhook_admission_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))', "p50"),
        (f'histogram_quantile(0.99, sum by (le) (rate(clusterdns_webhook_admission_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))', "p99"),
        (f'histogram_quantile(0.999, sum by (le) (rate(clusterdns_webhook_admission_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))', "p99.9"),
    ], "s", x=12)
    y += 8
    ts("Sidecar injections by reason", [(f'sum by (reason) (rate(clusterdns_webhook_injections_total{{{SEL}}}[$__rate_interval]))', "{{reason}}")], "ops", stack=True)
    ts("Pods skipped by reason", [(f'sum by (reason) (rate(clusterdns_webhook_skips_total{{{SEL}}}[$__rate_interval]))', "{{reason}}")], "ops", x=12, stack=True)
    y += 8
    ts("Errors by kind (answered allowed, without a patch)", [(f'sum by (kind) (rate(clusterdns_webhook_errors_total{{{SEL}}}[$__rate_interval]))', "{{kind}}")], "ops")
    ts("Requests ignored by reason (not pod creations)", [(f'sum by (reason) (rate(clusterdns_webhook_ignored_total{{{SEL}}}[$__rate_interval]))', "{{reason}}")], "ops", x=12)
    y += 8
    stat("Injected share of pod creations", f'sum(rate(clusterdns_webhook_injections_total{{{SEL}}}[$__range])) / (sum(rate(clusterdns_webhook_injections_total{{{SEL}}}[$__range])) + sum(rate(clusterdns_webhook_skips_total{{{SEL}}}[$__range])))', "percentunit", w=6)
    stat("Micro-VMs made bigger (range)", f'sum(increase(clusterdns_webhook_micro_vm_size_increases_total{{{SEL}}}[$__range]))', w=6, x=6)
    stat("Namespaces opted in", f'max(clusterdns_webhook_inject_namespaces{{{SEL}}})', w=6, x=12)
    stat("Errors (range)", f'sum(increase(clusterdns_webhook_errors_total{{{SEL}}}[$__range]))', w=6, x=18)
    y += 4
    row("Serving certificate")
    ts("Certificate reloads by result", [(f'sum by (result) (increase(clusterdns_webhook_cert_reloads_total{{{SEL}}}[$__rate_interval]))', "{{result}}")])
    stat("Failed reloads (range)", f'sum(increase(clusterdns_webhook_cert_reloads_total{{{SEL}, result="error"}}[$__range]))', w=6, x=12)
    stat("Successful reloads (range)", f'sum(increase(clusterdns_webhook_cert_reloads_total{{{SEL}, result="ok"}}[$__range]))', w=6, x=18)
    y += 8
    row("Process")
    ts("Resident memory", [(f'process_resident_memory_bytes{{{SEL}}}', "{{instance}}")], "bytes", w=8)
    ts("CPU", [(f'rate(process_cpu_seconds_total{{{SEL}}}[$__rate_interval])', "{{instance}}")], "percentunit", w=8, x=8)
    ts("Open file descriptors", [(f'process_open_fds{{{SEL}}}', "{{instance}}")], w=8, x=16)
    y += 8


def dashboard(title, uid, tags, select_on):
    """The dashboard around `panels`; `select_on` is a metric every instance of the job exports."""
    return {
        "title": title,
        "uid": uid,
        "tags": tags,
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "annotations": {"list": []},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source",
             "current": {}, "hide": 0, "refresh": 1, "options": []},
            {"name": "job", "type": "query", "datasource": DS, "label": "Job",
             "query": {"query": f"label_values({select_on}, job)", "refId": "job"},
             "definition": f"label_values({select_on}, job)", "includeAll": True, "multi": True,
             "allValue": ".*", "current": {}, "refresh": 2, "options": []},
            {"name": "instance", "type": "query", "datasource": DS, "label": "Instance",
             "query": {"query": f'label_values({select_on}{{job=~"$job"}}, instance)', "refId": "instance"},
             "definition": f'label_values({select_on}{{job=~"$job"}}, instance)', "includeAll": True, "multi": True,
             "allValue": ".*", "current": {}, "refresh": 2, "options": []},
        ]},
        "panels": panels,
    }


which = sys.argv[1] if len(sys.argv) > 1 else "clusterdns"
if which == "clusterdns":
    clusterdns()
    board = dashboard("clusterdns", "clusterdns-overview", ["dns", "coredns", "kubernetes", "clusterdns"],
                      "coredns_build_info")
elif which == "webhook":
    webhook()
    board = dashboard("clusterdns webhook", "clusterdns-webhook", ["kubernetes", "admission", "clusterdns"],
                      "clusterdns_webhook_admission_duration_seconds_count")
else:
    sys.exit(f"usage: {sys.argv[0]} [clusterdns|webhook]")
print(json.dumps(board, indent=2))
