// The grounding page: POST the chosen file and phrase to /v1/ground, then draw the server's preview of the
// decoded image (so DICOM shows with its window) and the returned box, scaled from original pixels.
// Orientation: the server decodes a photo upright by its EXIF Orientation, as this browser shows the file
// (CSS image-orientation: from-image), and answers in that frame; the page draws the server's preview, never
// the local file, so the picture, the canvas size and the box always share one frame.
"use strict";
const $ = (id) => document.getElementById(id);
const MAX_SIDE = 640;  // longest canvas side in CSS pixels

$("token").value = sessionStorage.getItem("medground-token") || "";

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the preview could not be shown"));
    img.src = src;
  });
}

async function draw(answer) {
  const img = await loadImage("data:image/png;base64," + answer.preview_png);
  const scale = Math.min(1, MAX_SIDE / Math.max(answer.image.width, answer.image.height));
  const canvas = $("canvas");
  canvas.width = Math.round(answer.image.width * scale);
  canvas.height = Math.round(answer.image.height * scale);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  if (!answer.box) return;
  const [x1, y1, x2, y2] = answer.box.map((v) => v * scale);
  ctx.lineWidth = 2;
  ctx.strokeStyle = "#ff2020";
  ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
  ctx.font = "13px monospace";
  ctx.fillStyle = "#ff2020";
  ctx.fillText(answer.box.map((v) => v.toFixed(0)).join(", "), x1 + 2, Math.max(12, y1 - 4));
}

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) { setStatus("Choose an image first.", true); return; }
  const token = $("token").value.trim();
  sessionStorage.setItem("medground-token", token);
  const body = new FormData();
  body.append("image", file);
  body.append("phrase", $("phrase").value);
  body.append("preview", "true");
  document.body.dataset.state = "busy";
  $("go").disabled = true;
  setStatus("Locating…", false);
  try {
    const response = await fetch("/v1/ground", {
      method: "POST", body, headers: token ? { Authorization: "Bearer " + token } : {},
    });
    const answer = await response.json();
    if (!response.ok) {
      setStatus(`Error ${response.status}: ${answer.detail || response.statusText}`, true);
      document.body.dataset.state = "error";
      return;
    }
    await draw(answer);
    const coords = $("coords");
    coords.dataset.box = JSON.stringify(answer.box);
    coords.textContent = answer.box
      ? `box (original pixels): x1=${answer.box[0]}, y1=${answer.box[1]}, x2=${answer.box[2]}, y2=${answer.box[3]}`
      : "no box in the answer";
    setStatus(answer.box ? "Found." : "The model gave no usable box; its answer is below.", !answer.box);
    $("meta").textContent = `image ${answer.image.width}×${answer.image.height} ${answer.image.kind} · ` +
      `adapter v${answer.adapter_version} · ${answer.latency_ms.toFixed(0)} ms · answer: ${answer.text}`;
    document.body.dataset.state = "done";
  } catch (err) {
    setStatus("Request failed: " + err.message, true);
    document.body.dataset.state = "error";
  } finally {
    $("go").disabled = false;
  }
});
