// The official openai npm client against rill (tests/e2e/test_openai.py runs it):
//   node openai_client.cjs BASE_URL PROMPT MAX_TOKENS SAMPLING_JSON MESSAGES_JSON
// prints one JSON object with what each call gave.
const OpenAI = require('openai').default;

async function main() {
  const [baseURL, prompt, nArg, samplingJson, messagesJson] = process.argv.slice(2);
  const messages = JSON.parse(messagesJson);
  const n = Number(nArg);
  const sampling = JSON.parse(samplingJson);
  const client = new OpenAI({ baseURL, apiKey: process.env.RILL_KEY || 'none', maxRetries: 0, timeout: 60000 });
  const out = {};

  // Streaming, with the usage chunk.
  const s = await client.completions.create({
    model: 'rill', prompt, max_tokens: n, stream: true, stream_options: { include_usage: true }, ...sampling,
  });
  let text = '', finish = null, usage = null, chunks = 0;
  for await (const c of s) {
    chunks++;
    if (c.choices.length) {
      text += c.choices[0].text;
      if (c.choices[0].finish_reason) finish = c.choices[0].finish_reason;
    }
    if (c.usage) usage = c.usage;
  }
  out.stream = { text, finish, usage, chunks };

  // One JSON object.
  const r = await client.completions.create({ model: 'rill', prompt, max_tokens: n, ...sampling });
  out.nonstream = { text: r.choices[0].text, finish: r.choices[0].finish_reason, usage: r.usage };

  // Chat, streamed: the role first, then content deltas, then usage.
  const cs = await client.chat.completions.create({
    model: 'rill', messages, max_tokens: n, stream: true, stream_options: { include_usage: true }, ...sampling,
  });
  let role = null, ctext = '', cfinish = null, cusage = null;
  for await (const c of cs) {
    if (c.choices.length) {
      const d = c.choices[0].delta;
      if (d.role) role = d.role;
      if (d.content) ctext += d.content;
      if (c.choices[0].finish_reason) cfinish = c.choices[0].finish_reason;
    }
    if (c.usage) cusage = c.usage;
  }
  out.chat_stream = { role, text: ctext, finish: cfinish, usage: cusage };

  const cr = await client.chat.completions.create({ model: 'rill', messages, max_tokens: n, ...sampling });
  out.chat = { role: cr.choices[0].message.role, text: cr.choices[0].message.content,
               finish: cr.choices[0].finish_reason, usage: cr.usage };

  // An error: the SDK's APIError carries OpenAI's fields.
  try {
    await client.completions.create({ model: 'rill', prompt, n: 2 });
    out.error = null;
  } catch (e) {
    out.error = { status: e.status, param: e.param, type: e.type, code: e.code, message: e.message };
  }

  // Abort mid-stream.
  const ac = new AbortController();
  let got = 0;
  try {
    const s2 = await client.completions.create(
      { model: 'rill', prompt, max_tokens: 1500, stream: true, ...sampling }, { signal: ac.signal });
    for await (const c of s2) {
      got++;
      if (got === 3) ac.abort();
    }
    // The SDK ends the iteration quietly when its request is aborted.
    out.abort = { got, aborted: ac.signal.aborted, threw: null };
  } catch (e) {
    out.abort = { got, aborted: ac.signal.aborted, threw: e.constructor.name };
  }

  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
