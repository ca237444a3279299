// The admin app's few behaviours, without inline script (the CSP forbids it). Every page works without this file:
// forms post normally; it adds confirm dialogs, the face picker's boxes on a photo and live events.
"use strict";

// Buttons and forms with data-confirm ask first.
document.addEventListener("submit", (ev) => {
  const form = ev.target;
  const button = ev.submitter;
  const message = (button && button.dataset.confirm) || form.dataset.confirm;
  if (message && !window.confirm(message)) {
    ev.preventDefault();
  }
});

// Several faces on a photo: one button per face box over the photo, tied to the radio group below it.
function placeFaceBoxes(root) {
  root.querySelectorAll("figure.photo[data-faces]").forEach((figure) => {
    if (figure.dataset.placed) return;
    figure.dataset.placed = "1";
    const boxes = JSON.parse(figure.dataset.faces);
    const group = document.getElementsByName(figure.dataset.radio);
    const buttons = [];
    const sync = () => {
      buttons.forEach((b, i) => b.setAttribute("aria-pressed", group[i] && group[i].checked ? "true" : "false"));
    };
    boxes.forEach((box, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "face-box";
      b.setAttribute("aria-label", figure.dataset.label.replace("{n}", String(i + 1)));
      const tag = document.createElement("span");
      tag.textContent = String(i + 1);
      tag.setAttribute("aria-hidden", "true");
      b.appendChild(tag);
      // CSSOM, not a style attribute: allowed under style-src 'self'.
      b.style.left = `${box[0] * 100}%`;
      b.style.top = `${box[1] * 100}%`;
      b.style.width = `${box[2] * 100}%`;
      b.style.height = `${box[3] * 100}%`;
      b.addEventListener("click", () => {
        if (group[i]) {
          group[i].checked = true;
          group[i].dispatchEvent(new Event("change", { bubbles: true }));
        }
      });
      figure.appendChild(b);
      buttons.push(b);
    });
    group.forEach((radio) => radio.addEventListener("change", sync));
    sync();
  });
}

// Live events: the server-sent stream only says that something happened; the rows are fetched again through htmx
// with the page's filters, so the table is rendered in one place (the server).
function followEvents() {
  const live = document.querySelector("[data-event-stream]");
  if (!live || !window.EventSource) return;
  const status = document.getElementById("live-status");
  const source = new EventSource(live.dataset.eventStream);
  let count = 0;
  source.addEventListener("open", () => {
    if (status) status.textContent = status.dataset.on;
  });
  source.addEventListener("error", () => {
    if (status) status.textContent = status.dataset.off;
  });
  // The stream names its messages "event" (GET /api/events/stream).
  source.addEventListener("event", () => {
    count += 1;
    if (status) status.textContent = status.dataset.news.replace("{n}", String(count));
    if (window.htmx) window.htmx.trigger(live, "kiosk:event");
  });
  window.addEventListener("pagehide", () => source.close());
}

document.addEventListener("DOMContentLoaded", () => {
  placeFaceBoxes(document);
  followEvents();
});
document.addEventListener("htmx:afterSettle", (ev) => placeFaceBoxes(ev.target));
