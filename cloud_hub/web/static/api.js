// The REST API as the page uses it: bearer token from sessionStorage, one error type.

const TOKEN_KEY = "tandem.token";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** Query string from an object; arrays repeat the key, empty values are left out. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    for (const v of Array.isArray(value) ? value : [value]) {
      if (v !== undefined && v !== null && v !== "") q.append(key, String(v));
    }
  }
  const s = q.toString();
  return s ? "?" + s : "";
}

/** Call the hub; JSON body in and out; throws ApiError with the hub's `detail`. */
export async function api(path, { method = "GET", body, params, token } = {}) {
  const headers = { Accept: "application/json" };
  const auth = token || getToken();
  if (auth) headers.Authorization = "Bearer " + auth;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path + query(params), {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store",
    });
  } catch (err) {
    throw new ApiError(0, "the hub did not answer (" + err.message + ")");
  }
  let data = null;
  const text = await resp.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = { detail: text.slice(0, 200) }; }
  }
  if (!resp.ok) {
    throw new ApiError(resp.status, (data && data.detail) || resp.statusText || "HTTP " + resp.status);
  }
  return data;
}

export const seg = encodeURIComponent;
