// The PFI console's only script (served from /static, no inline script: the CSP forbids it).
"use strict";

function refreshLive(box) {
  const seconds = Number(box.dataset.seconds || 2);
  const tick = async () => {
    try {
      const response = await fetch(box.dataset.refresh, {credentials: "same-origin", cache: "no-store"});
      if (response.status === 401) { window.location.assign("/login"); return; }
      if (response.ok) { box.innerHTML = await response.text(); }  // server-rendered, escaped HTML
    } catch (e) { /* the next tick tries again */ }
    setTimeout(tick, seconds * 1000);
  };
  setTimeout(tick, seconds * 1000);
}

function followJob(box) {
  const bar = document.getElementById("progress");
  const tick = async () => {
    const response = await fetch(box.dataset.job, {credentials: "same-origin", cache: "no-store"});
    if (!response.ok) { return; }
    const job = await response.json();
    bar.max = job.total || 1;
    bar.value = job.done;
    document.getElementById("done").textContent = job.done;
    document.getElementById("replayed").textContent = job.replayed;
    document.getElementById("finished").textContent = job.finished ? "Finished." : "Running…";
    if (!job.finished) { setTimeout(tick, 500); }
  };
  tick();
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live) { refreshLive(live); }
  const job = document.getElementById("job");
  if (job) { followJob(job); }
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) { event.preventDefault(); }
    });
  }
});
