// PoseKD demo page: calls the public API (/v1/models, /v1/pose, /v1/videos, /v1/jobs/...) and draws the
// answers over the pictures. Plain browser JavaScript: no build step, no CDN.
"use strict";

const SKELETON = [[15, 13], [13, 11], [16, 14], [14, 12], [11, 12], [5, 11], [6, 12], [5, 6], [5, 7], [6, 8],
  [7, 9], [8, 10], [1, 2], [0, 1], [0, 2], [1, 3], [2, 4], [3, 5], [4, 6]];
const $ = (id) => document.getElementById(id);

function color(i) { // distinct, stable hues (golden-ratio steps), as the overlay MP4 uses
  return `hsl(${Math.round(((i * 0.618034) % 1) * 360)}, 85%, 50%)`;
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = $("api-key").value.trim();
  if (key) h["X-API-Key"] = key;
  return h;
}

function say(text, isError) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", !!isError);
}

async function api(path, options) {
  const r = await fetch(path, Object.assign({}, options, { headers: headers((options || {}).headers) }));
  if (!r.ok) {
    let message = `${r.status} ${r.statusText}`;
    try { const e = (await r.json()).error; message = `${r.status} ${e.code}: ${e.message}`; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return r;
}

function params(extra) {
  const p = new URLSearchParams(extra || {});
  if ($("model").value) p.set("model", $("model").value);
  if ($("detector").value) p.set("detector", $("detector").value);
  return p;
}

async function loadModels() {
  try {
    const body = await (await api("/v1/models")).json();
    for (const [select, task, preferred] of [[$("model"), "pose", body.default_pose_model],
                                             [$("detector"), "person_detection", body.default_detector]]) {
      select.innerHTML = "";
      for (const m of body.models.filter((x) => x.task === task)) {
        const option = new Option(m.name + (m.aliases.production ? ` (v${m.aliases.production})` : ""), m.name);
        option.selected = m.name === preferred;
        select.add(option);
      }
    }
    say(`${body.models.length} models in the store; defaults: ${body.default_pose_model} + ${body.default_detector}.`);
  } catch (err) {
    say(`Could not list the models (${err.message}). An API key may be needed.`, true);
  }
}

// sx, sy: canvas pixels per result pixel along x and y (they differ for a clip whose pixels are not
// square: the result is in coded pixels, the video element shows display pixels)
function drawPeople(ctx, people, sx, sy, minScore) {
  const w = Math.max(2, Math.round(Math.max(ctx.canvas.width, ctx.canvas.height) / 300));
  people.forEach((p, i) => {
    const c = color(p.track_id !== undefined ? p.track_id : i);
    const [x1, y1, x2, y2] = [p.bbox[0] * sx, p.bbox[1] * sy, p.bbox[2] * sx, p.bbox[3] * sy];
    ctx.strokeStyle = c; ctx.fillStyle = c; ctx.lineWidth = w;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.font = `${6 * w + 6}px system-ui, sans-serif`;
    const size = 6 * w + 6;
    ctx.fillText(p.track_id !== undefined ? `#${p.track_id}` : p.score.toFixed(2), x1 + 2,
                 y1 - 4 >= size ? y1 - 4 : y1 + size + 2);
    const k = p.keypoints;
    ctx.lineWidth = 1.5 * w;
    for (const [a, b] of SKELETON) {
      if (k[a][2] < minScore || k[b][2] < minScore) continue;
      ctx.beginPath(); ctx.moveTo(k[a][0] * sx, k[a][1] * sy); ctx.lineTo(k[b][0] * sx, k[b][1] * sy);
      ctx.stroke();
    }
    for (const [x, y, s] of k) {
      if (s < minScore) continue;
      ctx.beginPath(); ctx.arc(x * sx, y * sy, 1.6 * w, 0, 2 * Math.PI); ctx.fill();
    }
  });
}

function newCard(templateId, name) {
  const card = $(templateId).content.firstElementChild.cloneNode(true);
  card.querySelector(".name").textContent = name;
  $("results").prepend(card);
  return card;
}

async function poseImage(file) {
  const card = newCard("image-card", file.name);
  const canvas = card.querySelector("canvas");
  try {
    const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    const scale = Math.min(1, 1400 / Math.max(bitmap.width, bitmap.height));
    canvas.width = Math.round(bitmap.width * scale); canvas.height = Math.round(bitmap.height * scale);
    const ctx = canvas.getContext("2d");
    ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    const t0 = performance.now();
    const r = await api(`/v1/pose?${params({ min_score: $("min-score").value })}`, {
      method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" } });
    const body = await r.json();
    const roundTrip = performance.now() - t0;
    drawPeople(ctx, body.people, canvas.width / body.image.width, canvas.height / body.image.height, 0.2);
    const t = body.timing_ms;
    card.querySelector(".summary").textContent =
      `${body.people.length} ${body.people.length === 1 ? "person" : "people"} · ${body.model.name}:${body.model.version}` +
      (body.detector ? ` + ${body.detector.name}:${body.detector.version}` : "") +
      ` · inference ${t.inference.toFixed(0)} ms, queue ${t.queue.toFixed(0)} ms, in the service ${t.total.toFixed(0)} ms,` +
      ` round trip ${roundTrip.toFixed(0)} ms`;
    card.querySelector(".json").textContent = JSON.stringify(body, null, 1);
    card.dataset.people = String(body.people.length);
    card.dataset.status = "done";
  } catch (err) {
    card.querySelector(".summary").textContent = err.message;
    card.dataset.status = "error";
  }
}

async function poseVideo(file) {
  const card = newCard("video-card", file.name);
  const summary = card.querySelector(".summary");
  const bar = card.querySelector("progress");
  const video = card.querySelector("video");
  const overlay = card.querySelector("canvas");
  video.src = URL.createObjectURL(file);
  try {
    const form = new FormData();
    form.append("video", file, file.name);
    const render = $("render-video").checked;
    const job = await (await api(`/v1/videos?${params({ render: String(render) })}`, { method: "POST", body: form })).json();
    let status;
    for (;;) {
      status = await (await api(job.status_url)).json();
      bar.value = status.progress;
      summary.textContent = `job ${status.job_id}: ${status.status}, frame ${status.frames_done} of ${status.frames_total}`;
      if (["succeeded", "failed", "cancelled"].includes(status.status)) break;
      await new Promise((done) => setTimeout(done, 500));
    }
    if (status.status !== "succeeded") throw new Error(`the job ${status.status}${status.error ? ": " + status.error : ""}`);
    const result = await (await api(job.result_url)).json();
    const s = result.stats;
    summary.textContent = `${result.video.frames} frames · ${result.tracks.length} tracks · ${s.fps} frames/s in the ` +
      `service · keyframes ${(100 * s.keyframe_ratio).toFixed(0)} %`;
    card.querySelector(".json").textContent = JSON.stringify({ video: result.video, tracks: result.tracks, stats: s }, null, 1);
    const frames = result.frames;
    const paint = () => {
      overlay.width = video.videoWidth; overlay.height = video.videoHeight;
      const ctx = overlay.getContext("2d");
      ctx.clearRect(0, 0, overlay.width, overlay.height);
      let lo = 0, hi = frames.length - 1;  // the last frame at or before the current time
      while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (frames[mid].time <= video.currentTime + 1e-3) lo = mid; else hi = mid - 1; }
      if (frames.length) {
        drawPeople(ctx, frames[lo].people, overlay.width / result.video.width, overlay.height / result.video.height,
                   0.2);
      }
      if (!video.paused && !video.ended) requestAnimationFrame(paint);
    };
    video.addEventListener("play", paint); video.addEventListener("seeked", paint); video.addEventListener("loadeddata", paint);
    if (video.readyState >= 2) paint();
    if (render) {
      const mp4 = await (await api(`/v1/jobs/${status.job_id}/video`)).blob();
      const link = document.createElement("a");
      link.href = URL.createObjectURL(mp4); link.download = `${status.job_id}.mp4`;
      link.textContent = `download the overlay MP4 (${(mp4.size / 1e6).toFixed(1)} MB, drawn by the service)`;
      card.querySelector(".overlay-link").append(link);
      if (!playable(video)) {  // the browser cannot play the upload (AVI, MPEG-4 part 2…): show the overlay
        overlay.hidden = true;
        video.src = link.href;
        card.querySelector(".overlay-link").prepend("Your browser cannot play the uploaded file, so this is the " +
          "service's overlay. ");
      }
    } else if (!playable(video)) {
      card.querySelector(".overlay-link").textContent = "Your browser cannot play this file; tick " +
        "“render the overlay MP4” to get a version with the people drawn that it can play.";
    }
    card.dataset.tracks = String(result.tracks.length);
    card.dataset.status = "done";
  } catch (err) {
    summary.textContent = err.message;
    card.dataset.status = "error";
  }
}

function playable(video) {
  return !video.error && video.readyState > 0 && video.videoWidth > 0;
}

function handle(files) {
  for (const file of files) {
    if ((file.type || "").startsWith("video/") || /\.(mp4|mov|avi|webm|mkv)$/i.test(file.name)) poseVideo(file);
    else poseImage(file);
  }
}

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); handle(e.dataTransfer.files); });
$("files").addEventListener("change", (e) => { handle(e.target.files); e.target.value = ""; });
$("example").addEventListener("click", async () => {
  const blob = await (await fetch("/static/demo/astronaut.jpg")).blob();
  handle([new File([blob], "astronaut.jpg", { type: "image/jpeg" })]);
});
$("api-key").value = localStorage.getItem("posekd-api-key") || "";
$("api-key").addEventListener("change", () => { localStorage.setItem("posekd-api-key", $("api-key").value); loadModels(); });
loadModels();
