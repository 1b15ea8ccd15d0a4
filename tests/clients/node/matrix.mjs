// One operation of the Node client against the gateway; prints its answer as JSON.
// GATEWAY: the gateway URL; TOKEN: an ID token (from the environment, never argv).
import {BigQuery} from '@google-cloud/bigquery';
import {OAuth2Client} from 'google-auth-library';

const auth = new OAuth2Client();
auth.setCredentials({access_token: process.env.TOKEN, expiry_date: Date.now() + 3600e3});
const bq = new BigQuery({projectId: 'demo-project', apiEndpoint: process.env.GATEWAY, authClient: auth});
const customers = bq.dataset('sales').table('customers');

const operations = {
  async query() {
    const [rows] = await bq.query({
      query: 'SELECT customer_id, ssn FROM `demo-project.sales.customers` ORDER BY customer_id LIMIT 5',
    });
    return rows;
  },
  async getRows() {
    const [rows] = await customers.getRows({maxResults: 250});
    return rows.map(r => ({customer_id: r.customer_id, ssn: r.ssn}));
  },
  async metadata() {
    const [meta] = await customers.getMetadata();
    const [datasets] = await bq.getDatasets();
    const [tables] = await bq.dataset('sales').getTables();
    return {
      descriptions: Object.fromEntries(meta.schema.fields.map(f => [f.name, f.description ?? null])),
      datasets: datasets.map(d => d.id),
      tables: tables.map(t => t.id),
    };
  },
  async dryRun() {
    const [job] = await bq.createQueryJob({
      query: 'SELECT ssn FROM `demo-project.sales.customers`', dryRun: true,
    });
    return job.metadata.statistics.query;
  },
  async jobs() {
    const [jobs] = await bq.getJobs({maxResults: 5});
    return jobs.map(j => j.metadata.statistics.query?.statementType ?? null);
  },
};

const name = process.argv[2];
try {
  console.log(JSON.stringify({ok: true, result: await operations[name]()}));
} catch (err) {
  console.log(JSON.stringify({ok: false, code: err.code ?? null, message: String(err.message)}));
}
