// fallwatch service worker: shows a paged alert on the phone and acknowledges it from the
// notification's own button. The push payload is the JSON the webpush channel sends
// (gateway/channels/webpush.py): title, body, alert_id, kind, urgency, action, ack_url, tag.
self.addEventListener("push", (event) => {
  let msg = {};
  try { msg = event.data ? event.data.json() : {}; } catch (e) { msg = { title: "fallwatch", body: String(event.data && event.data.text()) }; }
  const urgent = msg.urgency === "urgent" || msg.urgency === "high";
  const actions = msg.ack_url && (msg.action === "raised" || msg.action === "escalated")
    ? [{ action: "ack", title: "Acknowledge" }] : [];
  event.waitUntil(self.registration.showNotification(msg.title || "fallwatch", {
    body: msg.body || "", tag: msg.tag || msg.alert_id, renotify: true, requireInteraction: urgent,
    data: { ack_url: msg.ack_url || null, alert_id: msg.alert_id || null }, actions,
  }));
});

self.addEventListener("notificationclick", (event) => {
  const data = event.notification.data || {};
  event.notification.close();
  if (event.action === "ack" && data.ack_url) {
    // the link is single use and signed; POST acts, GET would only show it
    event.waitUntil(fetch(data.ack_url, { method: "POST", headers: { Accept: "application/json" } })
      .then((r) => r.json())
      .then((res) => self.registration.showNotification(res.status === 200 ? "Acknowledged" : "Not acknowledged",
        { body: res.message, tag: (data.alert_id || "") + ":ack" })));
  } else {
    event.waitUntil(self.clients.openWindow(data.ack_url || "/staff"));
  }
});
