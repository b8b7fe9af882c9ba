// The grounding page: POST the chosen file and phrase to /v1/ground, then draw the server's preview of the
// decoded image (so DICOM shows with its window) and the returned box, scaled from original pixels.
// Orientation: the server decodes a photo upright by its EXIF Orientation, as this browser shows the file
// (CSS image-orientation: from-image), and answers in that frame; the page draws the server's preview, never
// the local file, so the picture, the canvas size and the box always share one frame.
// A new request and every error first clear the previous result (image, box, coordinates, text), so one
// image's box is never shown beside another file's name.
"use strict";
const $ = (id) => document.getElementById(id);
const SIDE = 640;  // every image is drawn with its longest side at SIDE canvas pixels (small ones scaled up)
const LABEL_PX = 14;  // label font size; the label is kept inside the canvas

$("token").value = sessionStorage.getItem("medground-token") || "";

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function clearResult() {
  const canvas = $("canvas");
  canvas.width = 1;  // resizing also wipes the pixels
  canvas.height = 1;
  canvas.dataset.scale = "";
  for (const id of ["coords", "reason", "meta", "trained", "knowledge"]) $(id).textContent = "";
  $("coords").dataset.box = "null";
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the preview could not be shown"));
    img.src = src;
  });
}

function drawLabel(ctx, text, x1, y1, width, height) {
  ctx.font = `${LABEL_PX}px monospace`;
  const w = ctx.measureText(text).width + 4;
  const x = Math.min(Math.max(0, x1), Math.max(0, width - w));
  // above the box when there is room, else just inside its top edge, never below the canvas
  let y = y1 - 4 >= LABEL_PX ? y1 - 4 : Math.min(y1 + LABEL_PX + 2, height - 4);
  y = Math.max(LABEL_PX, y);
  ctx.fillStyle = "rgba(0, 0, 0, 0.6)";
  ctx.fillRect(x, y - LABEL_PX, w, LABEL_PX + 3);
  ctx.fillStyle = "#ff2020";
  ctx.fillText(text, x + 2, y);
}

async function draw(answer) {
  const img = await loadImage("data:image/png;base64," + answer.preview_png);
  const scale = SIDE / Math.max(answer.image.width, answer.image.height);
  const canvas = $("canvas");
  canvas.width = Math.round(answer.image.width * scale);
  canvas.height = Math.round(answer.image.height * scale);
  canvas.dataset.scale = String(scale);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = scale < 1;  // enlarged small images keep their pixels sharp
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  if (!answer.box) return;
  const [x1, y1, x2, y2] = answer.box.map((v) => v * scale);
  ctx.lineWidth = 2;
  ctx.strokeStyle = "#ff2020";
  ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
  drawLabel(ctx, answer.box.map((v) => v.toFixed(0)).join(", "), x1, y1, canvas.width, canvas.height);
}

function trainedOn(t) {
  if (!t || !t.run) return "";
  const records = Object.entries(t.records || {}).map(([task, n]) => `${n} ${task}`).join(", ");
  const modality = (t.modalities || []).join(", ") || "unknown modality";
  return `Model trained on: ${modality} (${records || "records unknown"}; run ${t.run}, ` +
    `${t.manifest || "?"}${t.sources && t.sources.length ? ", " + t.sources.join(", ") : ""}). ` +
    "Answers on other kinds of images are not meaningful.";
}

function knowledgeLine(answer) {
  const why = {request: "as sent", phrase: `"${answer.knowledge_match}" in the phrase`,
               only_key: "the run's only key", none: "no finding of the run's keys in the phrase",
               off: "the model was trained without it"}[answer.knowledge_source] || answer.knowledge_source;
  return `prior knowledge: ${answer.knowledge_key || "none"} (${why})`;
}

function show(answer) {
  const coords = $("coords");
  coords.dataset.box = JSON.stringify(answer.box);
  coords.textContent = answer.box
    ? `box (original pixels): x1=${answer.box[0]}, y1=${answer.box[1]}, ` +
      `x2=${answer.box[2]}, y2=${answer.box[3]}`
    : "no box in the answer";
  $("reason").textContent = answer.box ? "" : `Why: ${answer.no_box_reason || "no usable box"}`;
  setStatus(answer.box ? "Found." : "The model gave no usable box; the reason and its answer are below.",
            !answer.box);
  $("knowledge").textContent = knowledgeLine(answer);
  $("trained").textContent = trainedOn(answer.trained_on);
  $("meta").textContent = `image ${answer.image.width}×${answer.image.height} ${answer.image.kind} · ` +
    `adapter v${answer.adapter_version} · ${answer.latency_ms.toFixed(0)} ms · answer: ${answer.text}`;
}

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearResult();
  const file = $("file").files[0];
  if (!file) { setStatus("Choose an image first.", true); return; }
  const token = $("token").value.trim();
  sessionStorage.setItem("medground-token", token);
  const body = new FormData();
  body.append("image", file);
  body.append("phrase", $("phrase").value);
  if ($("knowledge_key").value.trim()) body.append("knowledge_key", $("knowledge_key").value.trim());
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
      clearResult();
      setStatus(`Error ${response.status} for ${file.name}: ${answer.detail || response.statusText}`, true);
      document.body.dataset.state = "error";
      return;
    }
    await draw(answer);
    show(answer);
    document.body.dataset.state = "done";
  } catch (err) {
    clearResult();
    setStatus("Request failed: " + err.message, true);
    document.body.dataset.state = "error";
  } finally {
    $("go").disabled = false;
  }
});
