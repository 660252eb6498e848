// Images to send: read as base64; a file too large for one websocket frame is scaled down
// in the browser first (the server resizes every image anyway).

const FRAME_OVERHEAD = 4096; // the JSON around image_data: type, author, avatar

function base64Of(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ""));
    reader.onerror = () => reject(new Error("the file could not be read"));
    reader.readAsDataURL(blob);
  });
}

function encodedSize(bytes) {
  return Math.ceil(bytes / 3) * 4 + FRAME_OVERHEAD;
}

async function scaledDown(file, maxSide) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file); // EXIF orientation applied
  } catch {
    throw new Error("this browser cannot read the image");
  }
  const scale = Math.min(1, maxSide / Math.max(bitmap.width, bitmap.height));
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(bitmap.width * scale));
  canvas.height = Math.max(1, Math.round(bitmap.height * scale));
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  return new Promise((resolve, reject) => {
    canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("the image could not be encoded"))), "image/jpeg", 0.9);
  });
}

export async function readImage(file, maxFrameSize, maxSide) {
  if (!file.type.startsWith("image/")) throw new Error(`${file.name || "the file"} is not an image`);
  if (encodedSize(file.size) <= maxFrameSize) return base64Of(file);
  const smaller = await scaledDown(file, maxSide);
  if (encodedSize(smaller.size) > maxFrameSize) {
    throw new Error(`the image is larger than this server accepts (${maxFrameSize} bytes)`);
  }
  return base64Of(smaller);
}
