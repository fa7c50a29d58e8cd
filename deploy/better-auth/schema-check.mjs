// Asks Better Auth's own migration planner whether the database at DATABASE_URL matches the
// companion's configuration, and prints its findings as one JSON object (used by the tests).
// Nothing is changed: the plan is computed, compiled to SQL and printed, never run.
import { getMigrations } from "better-auth/db/migration";
import { authOptions, createPool, readSettings } from "./auth.mjs";

const settings = readSettings();
const pool = createPool(settings);
const warnings = [];
const options = {
  ...authOptions(settings, pool),
  logger: { level: "warn", log: (level, message) => warnings.push(`${level}: ${message}`) },
};
try {
  const plan = await getMigrations(options, { throwOnUnsafe: false });
  const names = (entries) => entries.map(({ table, fields }) => ({ table, fields: Object.keys(fields) }));
  const report = {
    toBeCreated: names(plan.toBeCreated),
    toBeAdded: names(plan.toBeAdded),
    toBeAddedIndexes: plan.toBeAddedIndexes.map(({ table, name }) => ({ table, name })),
    unsafeChanges: plan.unsafeChanges,
    schemaProblems: plan.schemaProblems,
    warnings,
    sql: await plan.compileMigrations(),
  };
  process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
} finally {
  await pool.end();
}
