// The status page: polls the admin API every 2 s with the admin token
// (from the URL fragment `#token=…` or the form, kept for this tab only)
// and renders nodes, agents and each connection's throughput since the
// last poll. No framework, nothing loaded from elsewhere.
"use strict";
(function () {
  const POLL_MS = 2000;
  const $ = (id) => document.getElementById(id);
  let token = new URLSearchParams(location.hash.slice(1)).get("token") ||
    sessionStorage.getItem("warren-admin-token") || "";
  if (location.hash) history.replaceState(null, "", location.pathname);
  const last = new Map(); // connection id -> [sentBytes, time]

  function cell(row, text, cls) {
    const td = row.insertCell();
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }
  function bytes(n) {
    if (n === undefined || n === null) return "-";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }
  const time = (ms) => new Date(ms).toISOString().replace("T", " ").slice(0, 19);

  async function api(path) {
    const resp = await fetch(path, { headers: { Authorization: "Bearer " + token } });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const err = new Error(body.message || resp.statusText);
      err.status = resp.status;
      throw err;
    }
    return body;
  }

  function renderNodes(nodes) {
    $("node").textContent = "node " + nodes.this + (nodes.clustered ? " (cluster)" : "");
    const tbody = $("nodes");
    tbody.replaceChildren();
    const list = nodes.nodes.length ? nodes.nodes : [{ nodeId: nodes.this }];
    for (const n of list) {
      const row = tbody.insertRow();
      cell(row, n.nodeId);
      cell(row, n.clusterAddr || "-");
      cell(row, n.leaseExpiresAt ? time(n.leaseExpiresAt) : "-");
    }
  }

  function renderAgents(agents, now) {
    const tbody = $("agents");
    tbody.replaceChildren();
    for (const a of agents.agents) {
      const conns = a.connections.length ? a.connections : [null];
      for (const c of conns) {
        const row = tbody.insertRow();
        row.dataset.clientId = a.clientId;
        row.dataset.state = c ? "connected" : "offline";
        cell(row, a.clientId);
        cell(row, c ? "connected" : "offline", c ? "connected" : "offline");
        cell(row, c ? c.node : "-");
        const t = cell(row, c ? c.transport : "-");
        if (c) t.title = c.transportNote;
        cell(row, c ? time(c.connectedAt) : "-");
        cell(row, c && c.inFlight !== undefined ? c.inFlight : "-", "n");
        cell(row, bytes(c && c.sentBytes), "n");
        cell(row, bytes(c && c.receivedBytes), "n");
        let rate = "-";
        if (c && c.sentBytes !== undefined) {
          const before = last.get(c.id);
          if (before) rate = bytes((c.sentBytes - before[0]) * 1000 / Math.max(1, now - before[1])) + "/s";
          last.set(c.id, [c.sentBytes, now]);
        }
        cell(row, rate, "n");
      }
    }
  }

  async function poll() {
    if (!token) { $("login").hidden = false; return; }
    try {
      const [nodes, agents] = await Promise.all([api("/api/nodes"), api("/api/agents")]);
      const now = Date.now();
      renderNodes(nodes);
      renderAgents(agents, now);
      $("error").textContent = "";
      $("updated").textContent = "updated " + time(now) + " UTC";
      sessionStorage.setItem("warren-admin-token", token);
    } catch (e) {
      $("error").textContent = "admin API: " + e.message;
      if (e.status === 401) { $("login").hidden = false; sessionStorage.removeItem("warren-admin-token"); return; }
    }
    setTimeout(poll, POLL_MS);
  }

  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value.trim();
    $("login").hidden = true;
    poll();
  });
  poll();
})();
