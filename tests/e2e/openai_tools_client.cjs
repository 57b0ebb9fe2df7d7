// The official openai npm client asking rill with tools (tests/e2e/test_tool_calls.py runs it):
//   node openai_tools_client.cjs BASE_URL MAX_TOKENS SAMPLING_JSON MESSAGES_JSON TOOLS_JSON
// prints one JSON object: the streamed answer as the client's own accumulator
// (chat.completions.stream → finalChatCompletion) built it, and the plain one.
const OpenAI = require('openai').default;

async function main() {
  const [baseURL, nArg, samplingJson, messagesJson, toolsJson] = process.argv.slice(2);
  const body = {
    model: 'rill', messages: JSON.parse(messagesJson), tools: JSON.parse(toolsJson), tool_choice: 'auto',
    max_tokens: Number(nArg), ...JSON.parse(samplingJson),
  };
  const client = new OpenAI({ baseURL, apiKey: process.env.RILL_KEY || 'none', maxRetries: 0, timeout: 60000 });
  const out = {};
  const s = client.chat.completions.stream({ ...body, stream: true });
  let chunks = 0;
  s.on('chunk', () => { chunks++; });
  const fin = await s.finalChatCompletion();
  const m = fin.choices[0].message;
  out.stream = { content: m.content, tool_calls: m.tool_calls || [], finish: fin.choices[0].finish_reason, chunks };
  const r = await client.chat.completions.create(body);
  const rm = r.choices[0].message;
  out.nonstream = { content: rm.content, tool_calls: rm.tool_calls || [], finish: r.choices[0].finish_reason };
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => { process.stderr.write(String(e && e.stack || e)); process.exit(1); });
