// Tools that run in the browser when an agent calls them (`tool.call` frames).

function isoWithOffset(date) {
  const pad = (n, width = 2) => String(Math.abs(Math.trunc(n))).padStart(width, "0");
  const offset = -date.getTimezoneOffset();
  const sign = offset >= 0 ? "+" : "-";
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
    `T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}` +
    `${sign}${pad(offset / 60)}:${pad(offset % 60)}`
  );
}

export const clientTools = {
  client_time() {
    const options = Intl.DateTimeFormat().resolvedOptions();
    return {
      iso: isoWithOffset(new Date()),
      timezone: options.timeZone || "UTC",
      locale: options.locale || navigator.language || "en",
    };
  },
};

// Runs a client tool; unknown tools and failures are answered as errors, never thrown.
export async function runClientTool(name, args) {
  const tool = Object.prototype.hasOwnProperty.call(clientTools, name) ? clientTools[name] : null;
  if (!tool) return { output: { error: `Unknown client tool: ${name}` }, is_error: true };
  try {
    return { output: await tool(args || {}), is_error: false };
  } catch (err) {
    return { output: { error: String((err && err.message) || err) }, is_error: true };
  }
}
