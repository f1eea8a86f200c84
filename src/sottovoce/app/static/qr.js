// A QR code the app made (rows of "0"/"1" modules, segno in the app process) drawn as
// SVG here: no image from anywhere, no markup parsed, one path of dark modules.
const SVG = "http://www.w3.org/2000/svg";

export function qrSvg(rows, label) {
  const n = rows.length;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${n} ${n}`);
  svg.setAttribute("class", "qr");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  svg.setAttribute("shape-rendering", "crispEdges");
  const back = document.createElementNS(SVG, "rect");
  back.setAttribute("width", String(n));
  back.setAttribute("height", String(n));
  back.setAttribute("fill", "#ffffff");
  const parts = [];
  rows.forEach((row, y) => {
    if (!/^[01]*$/.test(row) || row.length !== n) throw new Error("not a QR code");
    for (let x = 0; x < n; x++) if (row[x] === "1") parts.push(`M${x} ${y}h1v1h-1z`);
  });
  const path = document.createElementNS(SVG, "path");
  path.setAttribute("d", parts.join(""));
  path.setAttribute("fill", "#000000");
  svg.append(back, path);
  return svg;
}
