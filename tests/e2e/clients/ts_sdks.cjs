// The TypeScript SDKs (npm @anthropic-ai/sdk and openai) against a Pensieve server: each
// streams a reply that must be a tool call, and this prints what the SDK assembled, as one
// JSON object, for tests/e2e/test_clients.py to check.
//
// usage: NODE_PATH=<npm prefix>/node_modules node ts_sdks.cjs BASE_URL MODEL
const Anthropic = require("@anthropic-ai/sdk").default;
const OpenAI = require("openai").default;

const [baseUrl, model] = process.argv.slice(2);
const schema = {
  type: "object",
  properties: { city: { type: "string" }, days: { type: "integer", minimum: 1 } },
  required: ["city", "days"],
};
const question = "What is the weather in Paris for the next 3 days?";

async function anthropic() {
  const client = new Anthropic({ baseURL: baseUrl, apiKey: "local", maxRetries: 0 });
  const stream = client.messages.stream({
    model,
    max_tokens: 128,
    temperature: 0,
    tools: [{ name: "get_weather", description: "Get the weather in a city.", input_schema: schema }],
    tool_choice: { type: "tool", name: "get_weather" },
    messages: [{ role: "user", content: question }],
  });
  const events = [];
  stream.on("streamEvent", (e) => events.push(e.type));
  const message = await stream.finalMessage();
  return { events, stop_reason: message.stop_reason, content: message.content, usage: message.usage };
}

async function openaiChat(client) {
  const stream = await client.chat.completions.create({
    model,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
    tools: [{ type: "function", function: { name: "get_weather", description: "Get the weather in a city.", parameters: schema } }],
    tool_choice: { type: "function", function: { name: "get_weather" } },
    messages: [{ role: "user", content: question }],
  });
  const calls = [];
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      finish = choice.finish_reason || finish;
      for (const d of choice.delta.tool_calls || []) {
        if (!calls[d.index]) calls[d.index] = { id: d.id, name: d.function.name, arguments: "" };
        calls[d.index].arguments += d.function.arguments || "";
      }
    }
  }
  return { finish_reason: finish, calls, usage };
}

async function openaiResponses(client) {
  const stream = client.responses.stream({
    model,
    temperature: 0,
    input: question,
    tools: [{ type: "function", name: "get_weather", description: "Get the weather in a city.", parameters: schema, strict: false }],
    tool_choice: { type: "function", name: "get_weather" },
  });
  const events = [];
  stream.on("event", (e) => events.push(e.type));
  const response = await stream.finalResponse();
  return { events, status: response.status, output: response.output, usage: response.usage };
}

(async () => {
  const client = new OpenAI({ baseURL: `${baseUrl}/v1`, apiKey: "local", maxRetries: 0 });
  const out = {
    anthropic: await anthropic(),
    openai_chat: await openaiChat(client),
    openai_responses: await openaiResponses(client),
  };
  console.log(JSON.stringify(out));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
