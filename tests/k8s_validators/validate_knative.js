// Validate Knative Services with @kubernetes-models/knative.
// Reads a JSON list of objects on stdin; prints a JSON list of error messages (null when valid).
"use strict";
const { Service } = require("@kubernetes-models/knative/serving.knative.dev/v1/Service");

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const results = JSON.parse(input).map((obj) => {
    try {
      new Service(obj).validate();
      return null;
    } catch (err) {
      return String(err && err.message ? err.message : err);
    }
  });
  process.stdout.write(JSON.stringify(results));
});
